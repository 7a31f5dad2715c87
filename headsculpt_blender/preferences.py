"""Add-on preferences: which engine (local process or remote URL), models, and options passed through."""
from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty

from .client import EngineError
from .engine import EngineSettings, detect_engine_python, parse_extra_args

ADDON_ID = __package__


def user_dir() -> Path:
    """The extension's own user folder (results, previews, the local engine's data)."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_ID, create=True))
    except ValueError:  # loaded as a plain add-on (not through an extensions repository)
        return Path(bpy.utils.user_resource("CONFIG", path="headsculpt", create=True))


class HeadSculptPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    engine_mode: EnumProperty(
        name="Engine", default="local",
        items=[("local", "Local", "Start `headsculpt serve` on this computer and stop it when Blender exits"),
               ("remote", "Remote", "Connect to an engine running elsewhere (URL and token)")])
    engine_python: StringProperty(
        name="Engine Python", subtype="FILE_PATH",
        description="Python interpreter with the HeadSculpt engine installed; empty: the .venv of the "
                    "HeadSculpt checkout this add-on lives in")
    data_dir: StringProperty(
        name="Engine data", subtype="DIR_PATH",
        description="Folder of the local engine's jobs and priors; empty: the add-on's user folder")
    remote_url: StringProperty(name="URL", default="http://127.0.0.1:8765")
    remote_token: StringProperty(name="Token", subtype="PASSWORD",
                                 description="The engine's access token (its data folder's `token` file)")
    models: EnumProperty(
        name="Models", default="default",
        items=[("default", "Default", "Stable Diffusion 1.5 with the face ControlNet, from the cache"),
               ("tiny", "Tiny", "Tiny random models: fast, for testing the connection only"),
               ("folder", "Folder", "Models in a local folder")])
    models_folder: StringProperty(name="Models folder", subtype="DIR_PATH")
    back_view_token_file: StringProperty(
        name="<back-view> token", subtype="FILE_PATH",
        description="Learned <back-view> embedding (from `headsculpt learn-token`); empty: plain \"back view\"")
    flame_landmark_file: StringProperty(
        name="FLAME landmarks", subtype="FILE_PATH",
        description="Optional: 478 FLAME vertex indices, one per MediaPipe landmark (.npy or JSON), sent with "
                    "FLAME priors instead of letting the engine find the landmarks")
    extra_args: StringProperty(name="Extra options",
                               description="More `headsculpt serve` options, as on a command line")
    poll_interval: FloatProperty(name="Refresh every", default=1.0, min=0.2, max=30.0, unit="TIME_ABSOLUTE",
                                 subtype="TIME_ABSOLUTE")

    def draw(self, context) -> None:
        layout = self.layout
        layout.prop(self, "engine_mode", expand=True)
        if self.engine_mode == "local":
            layout.prop(self, "engine_python")
            if not self.engine_python:
                found = detect_engine_python(Path(__file__).resolve().parent)
                layout.label(text=f"Detected: {found}" if found else "No .venv found above the add-on folder",
                             icon="CHECKMARK" if found else "ERROR")
            layout.prop(self, "data_dir")
            layout.prop(self, "models")
            if self.models == "folder":
                layout.prop(self, "models_folder")
            layout.prop(self, "back_view_token_file")
            layout.prop(self, "extra_args")
            row = layout.row()
            row.operator("headsculpt.engine_start", icon="PLAY")
            row.operator("headsculpt.engine_stop", icon="PAUSE")
        else:
            layout.prop(self, "remote_url")
            layout.prop(self, "remote_token")
        layout.prop(self, "flame_landmark_file")
        layout.prop(self, "poll_interval")


def preferences(context=None) -> HeadSculptPreferences:
    context = context or bpy.context
    return context.preferences.addons[ADDON_ID].preferences


def engine_settings(prefs: HeadSculptPreferences) -> EngineSettings:
    """A plain snapshot of the preferences for worker threads."""
    models = prefs.models
    if models == "folder":
        if not prefs.models_folder:
            raise EngineError("Pick the models folder in the add-on preferences, or choose other models.")
        models = bpy.path.abspath(prefs.models_folder)
    return EngineSettings(
        mode=prefs.engine_mode,
        url=prefs.remote_url.strip(),
        token=prefs.remote_token.strip(),
        python=bpy.path.abspath(prefs.engine_python) if prefs.engine_python else "",
        data_dir=bpy.path.abspath(prefs.data_dir) if prefs.data_dir else str(user_dir() / "engine"),
        models=models,
        back_view_token_file=bpy.path.abspath(prefs.back_view_token_file) if prefs.back_view_token_file else "",
        extra_args=parse_extra_args(prefs.extra_args),
    )


CLASSES = (HeadSculptPreferences,)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
