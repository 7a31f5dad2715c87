"""Download models from the add-on's preferences, for real: the local engine's `download-models` (this
checkout's engine, run by this interpreter) against a local server that answers as the Hugging Face Hub
does, serving the tiny models under the default ids; the progress, the outcome, and a second press that
finds everything in the cache. A token given in the field reaches the gated repository."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bpy, pytest.mark.slow]


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    from fake_hub import FakeHub, tiny_default_repos
    from headsculpt_engine.config import DEFAULT_FACE_CONTROLNET

    server = FakeHub(tiny_default_repos(tmp_path / "repos"), gated={DEFAULT_FACE_CONTROLNET: "hf_secret"}).start()
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield server, tmp_path / "hf-cache"
    server.stop()


def press_download(bpy, timeout: float = 600.0):
    from headsculpt_blender import model_download

    assert bpy.ops.headsculpt.download_models() == {"FINISHED"}
    return model_download.DOWNLOAD.wait(timeout)


def test_download_models_from_the_preferences(bpy, scene, hub_env):
    from headsculpt_blender import preferences

    server, cache = hub_env
    prefs = preferences.preferences()
    prefs.engine_mode, prefs.engine_python, prefs.models = "local", sys.executable, "default"
    bpy.context.preferences.system.use_online_access = True

    setattr(bpy.context.window_manager, preferences.TOKEN_PROP, "")
    refused = press_download(bpy)  # the face ControlNet is gated: without the token, a sentence
    assert refused.phase == "failed" and "Download models failed" in refused.message
    assert "token" in refused.message.lower() and "hf_secret" not in refused.message

    setattr(bpy.context.window_manager, preferences.TOKEN_PROP, "hf_secret")
    done = press_download(bpy)
    assert done.phase == "done" and done.message.startswith("Models ready"), done.message
    assert done.total_bytes > 0 and done.done_bytes == done.total_bytes
    for repo in server.repos:
        assert (cache / f"models--{repo.replace('/', '--')}" / "snapshots").is_dir(), repo
    log = (preferences.user_dir() / "download.log").read_text()
    assert "hf_secret" not in log  # the token went through the environment only

    again = press_download(bpy)
    assert again.phase == "done" and again.message == "Models ready: every file is in the Hugging Face cache"

    # The token is kept for the session only: neither a saved .blend file nor the saved preferences hold it.
    blend = cache.parent / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.save_userpref()
    userpref = Path(bpy.utils.resource_path("USER")) / "config" / "userpref.blend"
    assert blend.is_file() and userpref.is_file()
    assert b"hf_secret" not in blend.read_bytes() and b"hf_secret" not in userpref.read_bytes()
