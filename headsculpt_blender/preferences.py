"""Add-on preferences: which engine (local process or remote URL), models, and options passed through."""
from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty

from . import engine_setup, model_download
from .client import EngineError
from .engine import EngineSettings, detect_engine_python, engine_launcher, parse_extra_args

ADDON_ID = __package__


def user_dir() -> Path:
    """The extension's own user folder (results, previews, the local engine's data and environment)."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_ID, create=True))
    except ValueError:  # loaded as a plain add-on (not through an extensions repository)
        return Path(bpy.utils.user_resource("CONFIG", path="headsculpt", create=True))


def setup_env_dir() -> Path:
    """Where Set up engine puts the engine's Python environment."""
    return user_dir() / engine_setup.ENV_DIR_NAME


def draw_engine_setup(layout, prefs) -> None:
    """The Set up engine line: its progress while it runs, else what is there and the button.
    Shared by the preferences and the panel."""
    progress = engine_setup.SETUP.snapshot()
    if progress.phase == "running":
        factor = (progress.step - 1) / progress.steps if progress.steps else 0.0
        layout.progress(factor=max(factor, 0.0), type="BAR", text=progress.line)
        layout.operator("headsculpt.setup_engine_cancel", icon="CANCEL")
        return
    info = engine_setup.ready_info(setup_env_dir())
    if progress.phase in ("failed", "cancelled"):
        col = layout.column(align=True)
        col.alert = progress.phase == "failed"
        col.label(text=progress.message, icon="ERROR" if progress.phase == "failed" else "INFO")
    elif info is not None:
        layout.label(text=engine_setup.ready_line(info), icon="CHECKMARK")
    elif not local_engine_found(prefs):
        layout.label(text="No engine is set up on this computer yet", icon="ERROR")
    row = layout.row()
    row.operator("headsculpt.setup_engine", icon="IMPORT",
                 text="Repair engine" if info is not None else "Set up engine")


def draw_model_download(layout, prefs) -> None:
    """Download models: the token field, the button, and the download's progress or outcome."""
    progress = model_download.DOWNLOAD.snapshot()
    if progress.phase == "running":
        layout.progress(factor=progress.factor, type="BAR", text=progress.line)
        layout.operator("headsculpt.download_models_cancel", icon="CANCEL")
        return
    if progress.message:
        col = layout.column(align=True)
        col.alert = progress.phase == "failed"
        col.label(text=progress.message, icon="ERROR" if progress.phase == "failed" else "INFO")
    layout.prop(bpy.context.window_manager, TOKEN_PROP)
    layout.operator("headsculpt.download_models", icon="IMPORT")


def local_engine_found(prefs) -> bool:
    """Whether a local engine can be started (the preferences' path, a finished setup, a checkout, PATH)."""
    try:
        engine_launcher(engine_settings(prefs))
    except EngineError:
        return False
    return True


class HeadSculptPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    engine_mode: EnumProperty(
        name="Engine", default="local",
        items=[("local", "Local", "Start `headsculpt serve` on this computer and stop it when Blender exits"),
               ("remote", "Remote", "Connect to an engine running elsewhere (URL and token)")])
    engine_python: StringProperty(
        name="Engine Python", subtype="FILE_PATH",
        description="Python interpreter with the HeadSculpt engine installed; empty: the engine that "
                    "Set up engine made (or, for developers, the .venv of the checkout this add-on lives in)")
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
    lora: StringProperty(name="Style LoRA", subtype="FILE_PATH",
                         description="A style LoRA every job uses unless the panel names one: a .safetensors file "
                                     "(uploaded to the engine) or a Hugging Face id (owner/name) in the engine's "
                                     "model cache; empty: none")
    lora_scale: FloatProperty(name="LoRA scale", min=-2.0, max=2.0, soft_min=0.0, soft_max=1.5, default=1.0)
    poll_interval: FloatProperty(name="Refresh every", default=1.0, min=0.2, max=30.0, unit="TIME_ABSOLUTE",
                                 subtype="TIME_ABSOLUTE")

    def draw(self, context) -> None:
        layout = self.layout
        layout.prop(self, "engine_mode", expand=True)
        if self.engine_mode == "local":
            draw_engine_setup(layout.box(), self)
            layout.prop(self, "engine_python")
            if not self.engine_python:
                found = detect_engine_python(Path(__file__).resolve().parent)
                if found:
                    layout.label(text=f"Developer checkout: {found}", icon="CHECKMARK")
            layout.prop(self, "data_dir")
            layout.prop(self, "models")
            if self.models == "folder":
                layout.prop(self, "models_folder")
            elif self.models == "default":
                draw_model_download(layout.box(), self)
            layout.prop(self, "back_view_token_file")
            layout.prop(self, "extra_args")
            row = layout.row()
            row.operator("headsculpt.engine_start", icon="PLAY")
            row.operator("headsculpt.engine_stop", icon="PAUSE")
        else:
            layout.prop(self, "remote_url")
            layout.prop(self, "remote_token")
        layout.prop(self, "flame_landmark_file")
        row = layout.row()
        row.prop(self, "lora")
        row.prop(self, "lora_scale", text="Scale")
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
        setup_python=engine_setup.ready_python(setup_env_dir()),
        data_dir=bpy.path.abspath(prefs.data_dir) if prefs.data_dir else str(user_dir() / "engine"),
        models=models,
        back_view_token_file=bpy.path.abspath(prefs.back_view_token_file) if prefs.back_view_token_file else "",
        extra_args=parse_extra_args(prefs.extra_args),
    )


CLASSES = (HeadSculptPreferences,)
# The Hugging Face access token for Download models lives on the window manager, which Blender never
# saves: it is gone when Blender quits, and it is in neither the preferences nor any .blend file.
TOKEN_PROP = "headsculpt_hf_token"

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()
    setattr(bpy.types.WindowManager, TOKEN_PROP, StringProperty(
        name="Access token", subtype="PASSWORD", options={"SKIP_SAVE"},
        description="Optional Hugging Face access token, for models that need one; kept for this Blender "
                    "session only, never saved"))


def unregister() -> None:
    delattr(bpy.types.WindowManager, TOKEN_PROP)
    _unregister_classes()
