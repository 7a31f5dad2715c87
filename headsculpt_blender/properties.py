"""Scene properties: the panel's inputs and the state of the current job.

The job id and everything needed to finish a job (prior object, prompt, parent) live in the scene, so
saving the file and opening it again (or an engine restart) lets polling resume where it stopped.
"""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

PROMPT_PREFIXES = [
    ("a head of", "A head of", "HeadSculpt's prompt prefix: \"a head of ...\""),
    ("a DSLR portrait of", "A DSLR portrait of", "HeadSculpt's prefix for realistic heads"),
    ("", "No prefix", "Use the prompt as typed"),
]
PRESETS = [
    ("draft", "Draft", "Few iterations at low resolution: a quick look"),
    ("standard", "Standard", "A balance of quality and time"),
    ("paper", "Paper", "The papers' iteration counts and resolutions (slow; a GPU is needed)"),
    ("tiny", "Tiny", "A handful of iterations for testing the connection"),
]
GUIDANCE = [
    ("sds", "HeadSculpt SDS", "Score distillation with the landmark ControlNet (HeadSculpt)"),
    ("ssd", "HeadArtist SSD", "Self score distillation (HeadArtist)"),
]
LANDMARK_MODES = [
    ("auto", "Find landmarks", "The engine finds the face's landmarks on the prior (or takes FLAME's)"),
    ("keypoints", "Marked keypoints", "Carry the landmark layout onto the prior through keypoints you mark on it "
                                      "(for heads with no face the engine can find)"),
    ("none", "No landmark control", "Generate with the plain diffusion model and view prompts: expect weaker "
                                    "view consistency"),
]
ACTIVE_STATES = ("submitting", "queued", "running")

# Custom properties that mark an object as a generated avatar.
PROP_JOB = "headsculpt_job_id"
PROP_KIND = "headsculpt_kind"
PROP_PROMPT = "headsculpt_prompt"
PROP_SEED = "headsculpt_seed"
PROP_PARENT = "headsculpt_parent_job_id"
PROP_INSTRUCTION = "headsculpt_instruction"
PROP_PRIOR = "headsculpt_prior"


def _poll_mesh(_self, obj) -> bool:
    return obj.type == "MESH" and not obj.get(PROP_JOB)


class HeadSculptSceneState(bpy.types.PropertyGroup):
    # Inputs
    prior: PointerProperty(name="Prior", type=bpy.types.Object, poll=_poll_mesh,
                           description="The head mesh the avatar is sculpted on (a FLAME head or any head)")
    prompt_prefix: EnumProperty(name="Prefix", items=PROMPT_PREFIXES, default="a head of")
    prompt: StringProperty(name="Prompt", description="What the head should look like")
    negative_prompt: StringProperty(name="Negative", description="What to avoid")
    seed: IntProperty(name="Seed", min=0, default=0)
    preset: EnumProperty(name="Quality", items=PRESETS, default="standard")
    guidance: EnumProperty(name="Guidance", items=GUIDANCE, default="sds")
    landmark_mode: EnumProperty(name="Landmarks", items=LANDMARK_MODES, default="auto")
    edit_instruction: StringProperty(name="Instruction", description="How to change the avatar, "
                                                                      "e.g. \"make him older\"")
    edit_scale: FloatProperty(name="Edit scale", min=0.0, max=1.0, default=0.6,
                              description="w_e: weight of the instruction against the original prompt")
    edit_keeps_style: BoolProperty(name="Keep the avatar's style", default=True,
                                   description="Edit with the style LoRA and image prompt the avatar was made with "
                                               "where this panel names none of its own; off: only those named here")
    variations: IntProperty(name="Variations", min=1, max=16, default=1,
                            description="How many avatars to make on the prior, side by side: write the "
                                        "alternatives to vary in the prompt as {young|old}, or leave them out "
                                        "to vary the seed")
    # Styles and an image as prompt (StyleAvatar3D): a LoRA by Hugging Face id or a file uploaded to the engine,
    # an image uploaded to the engine
    lora: StringProperty(name="Style LoRA", subtype="FILE_PATH",
                         description="A style LoRA: a .safetensors file (uploaded to the engine) or the Hugging "
                                     "Face id (owner/name) of one in the engine's model cache; empty: the "
                                     "preferences' LoRA")
    lora_scale: FloatProperty(name="LoRA scale", min=-2.0, max=2.0, soft_min=0.0, soft_max=1.5, default=1.0,
                              description="How strongly the LoRA styles the avatar (0: not at all)")
    image_path: StringProperty(name="Image", subtype="FILE_PATH",
                               description="A reference image as prompt (IP-Adapter): front and side views follow it")
    image_scale: FloatProperty(name="Image scale", min=0.0, max=2.0, default=1.0,
                               description="How strongly front and side views follow the image")

    # The current job (kept in the file so that polling can resume)
    job_id: StringProperty()
    job_kind: StringProperty()
    job_state: StringProperty()  # "" | "submitting" | engine states
    job_stage: StringProperty()
    job_iteration: IntProperty()
    job_total: IntProperty()
    job_eta_s: FloatProperty(default=-1.0)
    job_updated_at: FloatProperty(default=0.0)
    job_prompt: StringProperty()
    job_seed: IntProperty()
    job_instruction: StringProperty()
    job_parent_id: StringProperty()
    job_prior: PointerProperty(type=bpy.types.Object)  # placement: the avatar takes its world matrix
    job_source: PointerProperty(type=bpy.types.Object)  # for edits: the avatar that was edited
    result_object: PointerProperty(type=bpy.types.Object)
    # Variations: the current job's avatar name and place in the row, and the jobs after it (JSON list
    # of {"job_id", "prompt", "name", "place"}), imported one after another as the engine finishes them.
    job_name: StringProperty()
    job_place: IntProperty()
    variation_queue: StringProperty()
    last_error: StringProperty()
    status: StringProperty()

    # The prior as the engine knows it (valid while prior_key matches the picked mesh)
    prior_id: StringProperty()
    prior_key: StringProperty()
    prior_info_json: StringProperty()

    preview_image: PointerProperty(type=bpy.types.Image)
    landmark_image: PointerProperty(type=bpy.types.Image)


def state(scene) -> HeadSculptSceneState:
    return scene.headsculpt


def is_avatar(obj) -> bool:
    return obj is not None and obj.type == "MESH" and bool(obj.get(PROP_JOB))


class ActiveAvatarPoll:
    """Mixin for operators and panels that only apply while a HeadSculpt avatar is the active object."""

    @classmethod
    def poll(cls, context):
        return is_avatar(context.active_object)


CLASSES = (HeadSculptSceneState,)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()
    bpy.types.Scene.headsculpt = PointerProperty(type=HeadSculptSceneState)


def unregister() -> None:
    del bpy.types.Scene.headsculpt
    _unregister_classes()
