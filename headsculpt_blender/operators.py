"""The panel's buttons. Each operator checks its inputs on the main thread, refuses with one plain
sentence (also kept as the panel's last error), and hands network work to `jobs`."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import bpy

from . import engine_setup, jobs, keypoints, model_download
from .background import Worker
from .client import EngineError
from .styles import StyleRefusal, style_fields
from .engine import LOCAL, engine_launcher
from .preferences import TOKEN_PROP, engine_settings, preferences, setup_env_dir, user_dir
from .prior import (FLAME_VERTEX_COUNT, is_flame_counts, load_landmark_indices, mesh_arrays, object_badge,
                    object_counts)
from .properties import ACTIVE_STATES, PROP_JOB, PROP_PRIOR, PROP_PROMPT, ActiveAvatarPoll, is_avatar, state
from .variations import prompt_variations

MAX_TEXT = 500  # the engine takes prompts and instructions of 1..500 characters
BASE_HEAD_NAME = "HeadSculpt base head"


class Refusal(Exception):
    """An input problem the artist can fix; the message is shown as it is."""


def refuse(operator, context, message: str) -> set:
    state(context.scene).last_error = message
    operator.report({"ERROR"}, message)
    return {"CANCELLED"}


def prior_key(obj, landmark_mode: str = "auto") -> str:
    """Which upload a remembered PriorInfo belongs to: the mesh, and how its landmarks were asked for."""
    vertex_count, face_count = object_counts(obj)
    return f"{obj.name}:{vertex_count}:{face_count}" + ("" if landmark_mode == "auto" else f":{landmark_mode}")


def known_prior_info(scene, obj) -> dict | None:
    """The engine's PriorInfo for `obj`, when the last upload was this very mesh."""
    st = state(scene)
    if obj is None or obj.type != "MESH" or not st.prior_info_json or st.prior_key != prior_key(obj, st.landmark_mode):
        return None
    return json.loads(st.prior_info_json)


def checked_prior(context):
    st = state(context.scene)
    obj = st.prior
    verdict = object_badge(obj, known_prior_info(context.scene, obj), st.landmark_mode)
    if not verdict.usable:
        raise Refusal(verdict.text)
    return obj


def checked_text(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise Refusal(f"Type {'an' if what[0] in 'aeiou' else 'a'} {what} first.")
    if len(text) > MAX_TEXT:
        raise Refusal(f"The {what} is {len(text)} characters long; the engine takes at most {MAX_TEXT}.")
    return text


def checked_idle(scene) -> None:
    if jobs.busy(scene) or state(scene).job_state in ACTIVE_STATES:
        raise Refusal("A HeadSculpt job is already under way: wait for it or cancel it.")


def settings(context):
    """The engine settings; for a local engine, refuses at once when there is none to start."""
    try:
        engine = engine_settings(preferences(context))
        if engine.mode == "local":
            engine_launcher(engine)
        return engine
    except EngineError as error:
        raise Refusal(str(error)) from None


def prior_payload(context, obj) -> tuple:
    """The prior's arrays in the engine frame, and the upload's landmark options (jobs.work_prior) for
    the panel's Landmarks choice: the keypoints marked on it, no detection, or (Find landmarks) the FLAME
    landmark indices from the preferences when they apply (a FLAME mesh whose modifiers keep its 5023
    vertices)."""
    vertices, faces = mesh_arrays(obj, context.evaluated_depsgraph_get())
    mode = state(context.scene).landmark_mode
    try:
        if mode == "keypoints":
            return vertices, faces, {"keypoints": keypoints.keypoints_payload(obj)}
        if mode == "none":
            return vertices, faces, {"detect_landmarks": False}
        path = preferences(context).flame_landmark_file
        if not path or not is_flame_counts(*object_counts(obj)) or len(vertices) != FLAME_VERTEX_COUNT:
            return vertices, faces, {}
        return vertices, faces, {"landmark_indices": load_landmark_indices(bpy.path.abspath(path), len(vertices))}
    except ValueError as error:
        raise Refusal(str(error)) from None


def full_prompt(st) -> str:
    return f"{st.prompt_prefix} {st.prompt.strip()}".strip()


class _HeadSculptOperator(bpy.types.Operator):
    """Shared refusal handling: `run` raises Refusal or EngineError for problems the artist can fix."""

    bl_options = {"REGISTER"}

    def execute(self, context):
        try:
            return self.run(context)
        except (Refusal, EngineError, StyleRefusal) as error:
            return refuse(self, context, str(error))


class HEADSCULPT_OT_generate(_HeadSculptOperator):
    bl_idname = "headsculpt.generate"
    bl_label = "Generate"
    bl_description = "Sculpt an avatar on the prior from the prompt (runs in the engine)"

    landmarks: bpy.props.EnumProperty(items=[
        ("panel", "As chosen", "The panel's Landmarks choice"),
        ("none", "No landmark control", "Switch the panel's Landmarks to No landmark control, then generate")],
        default="panel", options={"SKIP_SAVE"})

    def run(self, context):
        scene = context.scene
        st = state(scene)
        if self.landmarks == "none":
            st.landmark_mode = "none"
        prior = checked_prior(context)
        checked_text(st.prompt, "prompt")
        try:
            variations = prompt_variations(full_prompt(st), st.variations, st.seed)
        except ValueError as error:
            raise Refusal(str(error)) from None
        prompts = [checked_text(variation.prompt, "prompt") for variation in variations]
        checked_idle(scene)
        engine = settings(context)
        vertices, faces, landmarks = prior_payload(context, prior)
        styles, image = style_fields(st, preferences(context))
        job_list = [{"kind": "generate", "prompt": prompt, "negative_prompt": st.negative_prompt.strip(),
                     "seed": variation.seed, "preset": st.preset, "guidance": st.guidance, **styles}
                    for prompt, variation in zip(prompts, variations)]
        if st.landmark_mode == "none":
            for job in job_list:
                job["landmarks"] = "none"
        names = [variation.name for variation in variations]
        key = prior_key(prior, st.landmark_mode)
        jobs.begin_job(scene, "generate", prompt=prompts[0], seed=variations[0].seed, instruction="", parent_id="", prior=prior,
                       source=None, status="Uploading the prior and submitting the job", name=names[0])

        def apply(scene, result):
            jobs.remember_prior(scene, key, result["prior"])
            if result["refusal"]:
                raise EngineError(result["refusal"])
            jobs.queue_variations(scene, result["jobs"], names)
            count = len(result["jobs"])
            state(scene).status = "Job submitted" if count == 1 else f"{count} variations submitted"

        jobs.start(scene, "submitting the job", functools.partial(
            jobs.work_generate, engine, prior.name, vertices, faces, landmarks, job_list, image), apply)
        return {"FINISHED"}


class HEADSCULPT_OT_edit(ActiveAvatarPoll, _HeadSculptOperator):
    bl_idname = "headsculpt.edit"
    bl_label = "Edit avatar"
    bl_description = "Make an edited copy of the active avatar from the instruction"

    def run(self, context):
        scene = context.scene
        st = state(scene)
        source = context.active_object
        if not is_avatar(source):
            raise Refusal("Select a HeadSculpt avatar to edit.")
        instruction = checked_text(st.edit_instruction, "instruction")
        checked_idle(scene)
        engine = settings(context)
        styles, image = style_fields(st, preferences(context))
        job = {"kind": "edit", "parent_job_id": source[PROP_JOB], "instruction": instruction,
               "edit_scale": st.edit_scale, "preset": st.preset, "seed": st.seed,
               "parent_styles": st.edit_keeps_style, **styles}
        jobs.begin_job(scene, "edit", prompt=str(source.get(PROP_PROMPT, "")), seed=st.seed,
                       instruction=instruction, parent_id=str(source[PROP_JOB]),
                       prior=scene.objects.get(source.get(PROP_PRIOR, "")), source=source,
                       status="Submitting the edit")

        def apply(scene, result):
            jobs.set_job(scene, result["job"])
            state(scene).status = "Edit submitted"

        jobs.start(scene, "submitting the edit", functools.partial(jobs.work_submit, engine, job, image), apply)
        return {"FINISHED"}


class HEADSCULPT_OT_cancel(_HeadSculptOperator):
    bl_idname = "headsculpt.cancel"
    bl_label = "Cancel"
    bl_description = "Stop the running job (the engine keeps its last checkpoint)"

    @classmethod
    def poll(cls, context):
        return state(context.scene).job_state in ACTIVE_STATES

    def run(self, context):
        scene = context.scene
        st = state(scene)
        if not st.job_id:
            raise Refusal("The job is still being submitted; cancel it once it has an id.")
        engine = settings(context)

        def apply(scene, result):
            jobs.set_job(scene, result["job"])
            state(scene).variation_queue = ""

        jobs.start(scene, "cancelling the job", functools.partial(
            jobs.work_cancel, engine, st.job_id, *jobs.queued_job_ids(scene)), apply, slot="cancel")
        return {"FINISHED"}


class HEADSCULPT_OT_preview_landmarks(_HeadSculptOperator):
    bl_idname = "headsculpt.preview_landmarks"
    bl_label = "Preview landmarks"
    bl_description = "Upload the prior and show the face landmarks the engine found on it"

    def run(self, context):
        scene = context.scene
        obj = state(scene).prior
        if obj is None or obj.type != "MESH":
            raise Refusal(object_badge(obj, None).text)
        if jobs.busy(scene):
            raise Refusal("HeadSculpt is still busy; wait a moment.")
        engine = settings(context)
        vertices, faces, landmarks = prior_payload(context, obj)
        key = prior_key(obj, state(scene).landmark_mode)
        state(scene).status = "Finding landmarks on the prior"

        def apply(scene, result):
            jobs.remember_prior(scene, key, result["prior"])
            st = state(scene)
            st.landmark_image = jobs.load_png("HeadSculpt landmarks", result["png"], user_dir() / "previews")
            st.status = "Landmark preview updated"

        jobs.start(scene, "previewing landmarks", functools.partial(
            jobs.work_landmarks, engine, obj.name, vertices, faces, landmarks), apply)
        return {"FINISHED"}


def base_head_path() -> Path | None:
    """The built-in head: packed with the extension, or in the checkout's flame_assets/."""
    here = Path(__file__).resolve().parent
    candidates = [here / "assets" / "base_head.obj"] + [p / "flame_assets" / "base_head.obj" for p in here.parents]
    return next((path for path in candidates if path.is_file()), None)


class HEADSCULPT_OT_add_base_head(_HeadSculptOperator):
    bl_idname = "headsculpt.add_base_head"
    bl_label = "Add base head"
    bl_description = "Add the project's own head mesh to the scene and use it as the prior"
    bl_options = {"REGISTER", "UNDO"}

    def run(self, context):
        path = base_head_path()
        if path is None:
            raise Refusal("The built-in base head is missing from this installation; reinstall the add-on.")
        before = set(bpy.data.objects)
        # The file is Y up like FLAME; the OBJ importer's default axes stand it up in Blender (Z up).
        bpy.ops.wm.obj_import(filepath=str(path))
        created = [obj for obj in bpy.data.objects if obj not in before and obj.type == "MESH"]
        if not created:
            raise Refusal(f"Blender could not read {path}.")
        head = created[0]
        head.name = BASE_HEAD_NAME
        head.location = context.scene.cursor.location
        state(context.scene).prior = head
        return {"FINISHED"}


class HEADSCULPT_OT_make_animatable(ActiveAvatarPoll, _HeadSculptOperator):
    bl_idname = "headsculpt.make_animatable"
    bl_label = "Make animatable"
    bl_description = ("Give the avatar its prior's vertex groups, shape keys (with their drivers) and armature, "
                      "so it poses and takes expressions on its own; the prior mesh may then be deleted")
    bl_options = {"REGISTER", "UNDO"}

    def run(self, context):
        from .animate import make_animatable

        avatar = context.active_object
        if not is_avatar(avatar):
            raise Refusal("Select a HeadSculpt avatar to make animatable.")
        prior = context.scene.objects.get(avatar.get(PROP_PRIOR, "")) or state(context.scene).prior
        if prior is None or prior.type != "MESH":
            raise Refusal("The avatar's prior is not in the scene; pick it as the prior first.")
        try:
            report = make_animatable(prior, avatar)
        except ValueError as error:
            raise Refusal(str(error)) from None
        rig = f", armature {', '.join(report.armatures)}" if report.armatures else ""
        state(context.scene).status = (f"{avatar.name}: {len(report.vertex_groups)} vertex groups, "
                                       f"{len(report.shape_keys)} shape keys{rig}")
        return {"FINISHED"}


class HEADSCULPT_OT_engine_start(_HeadSculptOperator):
    bl_idname = "headsculpt.engine_start"
    bl_label = "Start engine"
    bl_description = "Start the local engine now (it also starts on the first Generate)"

    def run(self, context):
        engine = settings(context)
        if engine.mode != "local":
            raise Refusal("The engine is set to remote; a remote engine is started where it runs.")
        LOCAL.start(engine)
        return {"FINISHED"}


class HEADSCULPT_OT_engine_stop(_HeadSculptOperator):
    bl_idname = "headsculpt.engine_stop"
    bl_label = "Stop engine"
    bl_description = "Stop the local engine (jobs resume when it starts again)"

    def run(self, context):
        LOCAL.stop()
        return {"FINISHED"}


def _redraw_while_busy() -> float | None:
    """Timer (interactive Blender): redraw the preferences and the panel while a setup or download runs."""
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in ("PREFERENCES", "VIEW_3D"):
                area.tag_redraw()
    return 0.5 if engine_setup.SETUP.running or model_download.DOWNLOAD.running else None


def redraw_while_busy() -> None:
    if not bpy.app.background and not bpy.app.timers.is_registered(_redraw_while_busy):
        bpy.app.timers.register(_redraw_while_busy, first_interval=0.5)


DOWNLOAD_OFFLINE = ("Online access is off in Blender, and the models are downloaded from the Hugging Face Hub "
                    "(about 4 GB). Allow it in Edit > Preferences > System > Network (Allow Online Access), "
                    "then press Download models again.")


class _StartWorker(_HeadSculptOperator):
    """Set up engine and Download models: refused while Blender's online access is off (`offline` says how
    to allow it); `start` hands the work to a background.Worker, redrawn while it runs."""

    offline: str

    def run(self, context):
        if not bpy.app.online_access:
            raise Refusal(self.offline)
        self.start(context)
        redraw_while_busy()
        return {"FINISHED"}


class _CancelWorker(_HeadSculptOperator):
    """Stops `worker` (a background.Worker); pressable only while it runs."""

    worker: Worker

    @classmethod
    def poll(cls, context):
        return cls.worker.running

    def run(self, context):
        self.worker.cancel()
        return {"FINISHED"}


class HEADSCULPT_OT_setup_engine(_StartWorker):
    bl_idname = "headsculpt.setup_engine"
    bl_label = "Set up engine"
    bl_description = ("Make the engine's own Python environment in the extension's user folder: PyTorch for "
                      "this computer and the engine (downloads 1-4 GB; safe to press again to repair)")
    offline = engine_setup.ONLINE_ACCESS_OFF

    def start(self, context) -> None:
        try:
            engine_setup.SETUP.start(engine_setup.make_plan(setup_env_dir().parent))
        except engine_setup.SetupError as error:
            raise Refusal(str(error)) from None
        LOCAL.stop()  # an engine started from an older environment restarts from the new one
        state(context.scene).last_error = ""


class HEADSCULPT_OT_setup_engine_cancel(_CancelWorker):
    bl_idname = "headsculpt.setup_engine_cancel"
    bl_label = "Cancel setup"
    bl_description = "Stop setting up the engine (press Set up engine later to finish it)"
    worker = engine_setup.SETUP


class HEADSCULPT_OT_download_models(_StartWorker):
    bl_idname = "headsculpt.download_models"
    bl_label = "Download models"
    bl_description = ("Download the default models (Stable Diffusion 1.5 and its face and edit ControlNets) into "
                      "the Hugging Face cache on this computer, sizes first; resumes where it stopped")
    offline = DOWNLOAD_OFFLINE

    def start(self, context) -> None:
        engine = settings(context)
        if engine.mode != "local":
            raise Refusal("A remote engine loads its models where it runs: run `headsculpt download-models` "
                          "on that machine.")
        if engine.models != "default":
            raise Refusal("Download models fetches the default models; choose Models: Default first.")
        if model_download.DOWNLOAD.running:
            raise Refusal("The models are being downloaded already.")
        token = getattr(context.window_manager, TOKEN_PROP, "").strip()
        model_download.DOWNLOAD.start(model_download.download_command(engine_launcher(engine)), user_dir(), token)


class HEADSCULPT_OT_download_models_cancel(_CancelWorker):
    bl_idname = "headsculpt.download_models_cancel"
    bl_label = "Cancel download"
    bl_description = "Stop downloading (press Download models later to go on where it stopped)"
    worker = model_download.DOWNLOAD


def view_ray(region, region_data, x: int, y: int) -> keypoints.Ray:
    """The 3D view's ray through region pixel (x, y): what a click there points at."""
    from bpy_extras import view3d_utils

    return (view3d_utils.region_2d_to_origin_3d(region, region_data, (x, y)),
            view3d_utils.region_2d_to_vector_3d(region, region_data, (x, y)))


class HEADSCULPT_OT_mark_keypoints(bpy.types.Operator):
    """A thin modal shell over keypoints.MarkingTool: each left click on the prior marks the next keypoint
    (shown as an empty on the mesh); Backspace steps back, Enter stops, Esc or right click cancels.
    Viewport navigation keeps working meanwhile."""

    bl_idname = "headsculpt.mark_keypoints"
    bl_label = "Mark keypoints"
    bl_description = ("Click the face's keypoints on the prior (outer eye corners, nose tip, mouth corners, "
                      "chin), for heads on which no face is found")
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.area is not None and context.area.type == "VIEW_3D"

    def invoke(self, context, event):
        st = state(context.scene)
        if st.prior is None or st.prior.type != "MESH":
            return refuse(self, context, "Pick the head mesh as the prior first, then mark its keypoints.")
        self.landmark_mode, st.landmark_mode = st.landmark_mode, "keypoints"  # put back on cancel
        self.tool = keypoints.MarkingTool(st.prior)
        context.window_manager.modal_handler_add(self)
        context.area.header_text_set(self.tool.header)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        result = self.tool.handle(context, event, functools.partial(view_ray, context.region, context.region_data))
        if result != {"PASS_THROUGH"}:
            context.area.header_text_set(self.tool.header)
        if self.tool.status:
            st = state(context.scene)
            st.status = self.tool.status
            if result == {"CANCELLED"}:
                st.landmark_mode = self.landmark_mode
        return result


class HEADSCULPT_OT_save_keypoints(_HeadSculptOperator):
    bl_idname = "headsculpt.save_keypoints"
    bl_label = "Save keypoints"
    bl_description = ("Write the marked keypoints as the JSON file `headsculpt generate --keypoints` reads, "
                      "for the prior exported as OBJ or glTF")

    filepath: bpy.props.StringProperty(subtype="FILE_PATH", default="keypoints.json")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def run(self, context):
        prior = state(context.scene).prior
        if prior is None:
            raise Refusal("Pick the head mesh as the prior first, then mark its keypoints.")
        try:
            path = keypoints.save_keypoints(prior, bpy.path.abspath(self.filepath))
        except (ValueError, OSError) as error:
            raise Refusal(str(error)) from None
        state(context.scene).status = f"Keypoints saved to {path.name}"
        return {"FINISHED"}


CLASSES = (HEADSCULPT_OT_generate, HEADSCULPT_OT_edit, HEADSCULPT_OT_cancel, HEADSCULPT_OT_preview_landmarks,
           HEADSCULPT_OT_add_base_head, HEADSCULPT_OT_make_animatable, HEADSCULPT_OT_engine_start,
           HEADSCULPT_OT_engine_stop, HEADSCULPT_OT_setup_engine, HEADSCULPT_OT_setup_engine_cancel,
           HEADSCULPT_OT_download_models, HEADSCULPT_OT_download_models_cancel, HEADSCULPT_OT_mark_keypoints,
           HEADSCULPT_OT_save_keypoints)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
