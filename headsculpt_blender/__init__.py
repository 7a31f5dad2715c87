"""HeadSculpt for Blender: craft and edit textured 3D head avatars from text on a head prior.

The sidebar panel (3D viewport, N menu, tab "HeadSculpt") talks to the HeadSculpt engine over HTTP; the
engine (PyTorch, diffusers) runs in its own process, so this package imports only bpy, the standard
library and numpy.
"""
from __future__ import annotations

import bpy

from . import engine, engine_setup, jobs, model_download, operators, panel, preferences, properties

MODULES = (preferences, properties, operators, panel)


@bpy.app.handlers.persistent
def _resume_after_load(_dummy) -> None:
    jobs.resume_all()


def register() -> None:
    for module in MODULES:
        module.register()
    bpy.app.handlers.load_post.append(_resume_after_load)


def unregister() -> None:
    if _resume_after_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_resume_after_load)
    jobs.shutdown()
    engine.LOCAL.stop()
    engine_setup.SETUP.cancel()  # a setup or download left running would outlive the add-on
    model_download.DOWNLOAD.cancel()
    for module in reversed(MODULES):
        module.unregister()
