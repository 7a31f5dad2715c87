"""The sidebar panel (3D viewport, N menu, tab "HeadSculpt")."""
from __future__ import annotations

import textwrap

import bpy

from . import engine_setup, jobs, keypoints
from .operators import known_prior_info
from .preferences import draw_engine_setup, local_engine_found, preferences
from .prior import NO_LANDMARK_CONTROL, object_badge
from .properties import ACTIVE_STATES, PROP_INSTRUCTION, PROP_PROMPT, ActiveAvatarPoll, state


def progress(st) -> tuple[float, str]:
    """The progress bar's fill and text: stage, iteration and ETA."""
    if st.job_state == "submitting":
        return 0.0, "Submitting"
    if st.job_state == "queued":
        return 0.0, "Queued"
    factor = st.job_iteration / st.job_total if st.job_total > 0 else 0.0
    text = st.job_stage.capitalize() or st.job_state.capitalize()
    if st.job_total > 0:
        text += f" {st.job_iteration}/{st.job_total}"
    if st.job_eta_s >= 0 and st.job_state == "running":
        minutes, seconds = divmod(int(round(st.job_eta_s)), 60)
        text += f", {minutes}:{seconds:02d} left"
    if st.job_state in ("done", "cancelled", "failed"):
        factor = 1.0 if st.job_state == "done" else factor
    return min(max(factor, 0.0), 1.0), text


class _Panel(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "HeadSculpt"


class HEADSCULPT_PT_main(_Panel):
    bl_idname = "HEADSCULPT_PT_main"
    bl_label = "HeadSculpt"

    def draw(self, context):
        st = state(context.scene)
        layout = self.layout
        prefs = preferences(context)
        if prefs.engine_mode == "local" and (engine_setup.SETUP.running or not local_engine_found(prefs)):
            draw_engine_setup(layout.box(), prefs)

        box = layout.box()
        box.label(text="Prior", icon="USER")
        box.prop(st, "prior", text="")
        verdict = object_badge(st.prior, known_prior_info(context.scene, st.prior), st.landmark_mode)
        box.label(text=verdict.text, icon=verdict.icon)
        draw_landmark_choice(box, st)
        row = box.row(align=True)
        row.operator("headsculpt.add_base_head", icon="ADD")
        row.operator("headsculpt.preview_landmarks", icon="HIDE_OFF")
        if st.landmark_image is not None and st.landmark_image.preview is not None:
            box.template_icon(icon_value=st.landmark_image.preview.icon_id, scale=8.0)

        box = layout.box()
        box.label(text="Prompt", icon="TEXT")
        box.prop(st, "prompt_prefix", text="")
        box.prop(st, "prompt", text="")
        box.prop(st, "negative_prompt")
        row = box.row()
        row.prop(st, "seed")
        row.prop(st, "preset", text="")
        box.prop(st, "guidance", text="")
        box.prop(st, "variations")
        row = box.row(align=True)
        row.prop(st, "lora", text="", icon="BRUSHES_ALL")
        row.prop(st, "lora_scale", text="Scale")
        row = box.row(align=True)
        row.prop(st, "image_path", text="", icon="IMAGE_DATA")
        row.prop(st, "image_scale", text="Scale")

        row = layout.row(align=True)
        row.scale_y = 1.4
        running = st.job_state in ACTIVE_STATES or jobs.busy(context.scene)
        sub = row.row(align=True)
        sub.enabled = not running
        sub.operator("headsculpt.generate", icon="SHADERFX")
        row.operator("headsculpt.cancel", icon="CANCEL")

        if st.job_state:
            factor, text = progress(st)
            layout.progress(factor=factor, type="BAR", text=text)
        if st.preview_image is not None and st.preview_image.preview is not None:
            layout.template_icon(icon_value=st.preview_image.preview.icon_id, scale=10.0)
        if st.status:
            layout.label(text=st.status, icon="INFO")
        if st.last_error:
            col = layout.column(align=True)
            col.alert = True
            for number, line in enumerate(_wrap(st.last_error, 48)):
                col.label(text=line, icon="ERROR" if number == 0 else "BLANK1")
        if no_face_found(st):
            draw_no_face_offer(layout.box())


class HEADSCULPT_PT_avatar(ActiveAvatarPoll, _Panel):
    bl_idname = "HEADSCULPT_PT_avatar"
    bl_label = "Avatar"
    bl_parent_id = "HEADSCULPT_PT_main"

    def draw(self, context):
        st = state(context.scene)
        avatar = context.active_object
        layout = self.layout
        layout.label(text=str(avatar.get(PROP_PROMPT, "")), icon="TEXT")
        if avatar.get(PROP_INSTRUCTION):
            layout.label(text=f"Edited: {avatar[PROP_INSTRUCTION]}", icon="MODIFIER")
        layout.prop(st, "edit_instruction", text="")
        layout.prop(st, "edit_scale")
        layout.prop(st, "edit_keeps_style")
        row = layout.row()
        row.enabled = st.job_state not in ACTIVE_STATES
        row.operator("headsculpt.edit", icon="GREASEPENCIL")
        layout.operator("headsculpt.make_animatable", icon="ARMATURE_DATA")


def draw_landmark_choice(box, st) -> None:
    """The Landmarks choice, with the keypoint tools or the cost of no landmark control."""
    box.prop(st, "landmark_mode", text="Landmarks")
    if st.landmark_mode == "keypoints":
        marked = len(keypoints.keypoint_objects(st.prior)) if st.prior is not None else 0
        row = box.row(align=True)
        row.operator("headsculpt.mark_keypoints", icon="RESTRICT_SELECT_OFF")
        row.operator("headsculpt.save_keypoints", icon="EXPORT", text="")
        box.label(text=f"{marked} of {len(keypoints.NAMES)} keypoints marked", icon="EMPTY_SINGLE_ARROW")
    elif st.landmark_mode == "none":
        box.label(text=NO_LANDMARK_CONTROL.capitalize(), icon="INFO")


def no_face_found(st) -> bool:
    """Whether the last failure was the engine finding no face on the prior (detection tried)."""
    return st.landmark_mode == "auto" and "no face" in st.last_error.lower()


def draw_no_face_offer(box) -> None:
    """The two ways on for a head the engine finds no face on."""
    box.label(text="No face found on this head. Either:", icon="QUESTION")
    box.operator("headsculpt.mark_keypoints", icon="RESTRICT_SELECT_OFF")
    box.operator("headsculpt.generate", text="Generate without landmark control", icon="SHADERFX").landmarks = "none"


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width) or [text]


CLASSES = (HEADSCULPT_PT_main, HEADSCULPT_PT_avatar)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
