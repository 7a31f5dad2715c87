"""Fixtures for the extension's tests: Blender's bpy module in this process, with the add-on enabled
from this checkout and a throw-away Blender user folder; a fresh empty scene per test."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def bpy(tmp_path_factory):
    # Blender reads its user folders when bpy is first imported: point them at a temporary folder so
    # that tests never touch the user's Blender preferences or extensions.
    if "bpy" not in sys.modules:
        os.environ["BLENDER_USER_RESOURCES"] = str(tmp_path_factory.mktemp("blender-user"))
    module = pytest.importorskip("bpy", reason="Blender's bpy module is not installed (python build.py setup)")
    return module


@pytest.fixture(scope="session")
def addon(bpy):
    """The add-on package, enabled the way Blender enables add-ons."""
    import addon_utils

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    def reraise(error):
        raise error

    module = addon_utils.enable("headsculpt_blender", default_set=True, handle_error=reraise)
    assert module is not None and hasattr(bpy.types.Scene, "headsculpt")
    yield module
    addon_utils.disable("headsculpt_blender", default_set=True)


@pytest.fixture
def scene(bpy, addon):
    """An empty scene; the engine set to `remote` with no URL until a test sets one, and the other
    preferences back at their defaults (a test that changes them does not change the next one's)."""
    from headsculpt_blender import jobs, preferences

    bpy.ops.wm.read_homefile(use_empty=True)
    prefs = preferences.preferences()
    prefs.engine_mode, prefs.remote_url, prefs.remote_token = "remote", "", ""
    prefs.engine_python = prefs.data_dir = prefs.models_folder = prefs.extra_args = ""
    prefs.models = "default"
    yield bpy.context.scene
    jobs.shutdown()



@pytest.fixture(scope="session")
def built_zip() -> Path:
    """The extension zip as `python build.py build` makes it (built once, then checked by Blender's
    validator)."""
    pytest.importorskip("bpy", reason="Blender's bpy module is not installed (python build.py setup)")
    sys.path.insert(0, str(ROOT))
    try:
        import build
    finally:
        sys.path.remove(str(ROOT))
    return build.build_extension(Path(sys.executable))
