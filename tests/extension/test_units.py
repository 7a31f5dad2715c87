"""Parts of the add-on that need no Blender scene and no real engine: frames, the prior badge, the HTTP
client against a stand-in engine, and the local engine process handshake."""
from __future__ import annotations

import json
import math
import os
import socket
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fake_engine import FakeEngine

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _package(bpy, addon):
    """headsculpt_blender/__init__.py imports bpy: import it through the fixtures that isolate Blender."""


def rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1.0]])


def test_frames_axes():
    from headsculpt_blender.frames import blender_to_engine, engine_to_blender

    # Blender up (+Z) is engine up (+Y); a character's front (-Y in Blender) is the engine's +Z.
    assert np.allclose(blender_to_engine([[0, 0, 1]]), [[0, 1, 0]])
    assert np.allclose(blender_to_engine([[0, -1, 0]]), [[0, 0, 1]])
    assert np.allclose(blender_to_engine([[1, 0, 0]]), [[1, 0, 0]])
    points = np.random.default_rng(0).normal(size=(50, 3))
    assert np.allclose(engine_to_blender(blender_to_engine(points)), points)
    # The glTF importer's Y-up -> Z-up conversion, (x, y, z) -> (x, -z, y), is engine_to_blender.
    assert np.allclose(engine_to_blender(points), np.stack([points[:, 0], -points[:, 2], points[:, 1]], 1))


def test_local_to_engine_undoes_the_obj_importers_rotation():
    from headsculpt_blender.frames import engine_to_local, local_to_engine

    canonical = np.random.default_rng(1).normal(size=(20, 3))
    # Blender imports a Y-up OBJ as the file's data under an object rotated +90 degrees about X.
    matrix = rotation_x(math.pi / 2)
    assert np.allclose(local_to_engine(canonical, matrix), canonical, atol=1e-6)
    # Data already stood up (rotation applied) and an identity object: the same engine points.
    stood_up = canonical @ rotation_x(math.pi / 2)[:3, :3].T
    assert np.allclose(local_to_engine(stood_up, np.eye(4)), canonical, atol=1e-6)
    # Translation is left out; rotation and scale are not; engine_to_local inverts it.
    matrix = rotation_x(0.3) @ np.diag([2.0, 3.0, 0.5, 1.0])
    matrix[:3, 3] = (5, 6, 7)
    engine = local_to_engine(canonical, matrix)
    assert np.allclose(engine_to_local(engine, matrix), canonical, atol=1e-5)
    with pytest.raises(ValueError, match="zero scale"):
        engine_to_local(engine, np.diag([0.0, 1, 1, 1]))


@pytest.mark.parametrize("kind,counts,info,usable,text", [
    (None, (0, 0), None, False, "Pick a head mesh"),
    ("CURVE", (0, 0), None, False, "This curve is not a mesh"),
    ("MESH", (0, 0), None, False, "has no faces"),
    ("MESH", (5023, 9976), None, True, "FLAME head (5023 vertices, 9976 faces)"),
    ("MESH", (5023, 10034), None, True, "FLAME head (5023 vertices, 10034 faces)"),
    ("MESH", (5023, 9000), None, True, "Other head mesh (5,023 vertices, 9,000 triangles)"),
    ("MESH", (800, 1500), {"landmarks": {"status": "found", "count": 478, "message": ""}}, True,
     "Head with 478 face landmarks found"),
    ("MESH", (800, 1500), {"landmarks": {"status": "missing", "count": 0, "message": "no face in view"}}, False,
     "No face landmarks on this mesh: no face in view"),
    ("MESH", (1_500_000, 3_000_000), None, False, "more than the engine takes"),
])
def test_badge(kind, counts, info, usable, text):
    from headsculpt_blender.prior import badge

    verdict = badge(kind, *counts, prior_info=info)
    assert verdict.usable is usable and text in verdict.text


def test_client_talks_the_contract():
    from headsculpt_blender.client import EngineClient, EngineError

    with FakeEngine() as engine:
        client = EngineClient(engine.url, "secret")
        assert client.health()["api_version"] == 1
        vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
        info = client.upload_prior("tri", vertices, np.array([[0, 1, 2]]))
        assert info["vertex_count"] == 3 and info["is_flame"] is False
        assert np.array_equal(engine.priors[info["prior_id"]][0], vertices)
        job = client.submit({"kind": "generate", "prior_id": info["prior_id"], "prompt": "a knight", "preset": "tiny"})
        assert client.job(job["job_id"])["state"] == "running"
        with pytest.raises(EngineError, match="refused the request: Unknown prior"):
            client.submit({"kind": "generate", "prior_id": "nope", "prompt": "a knight", "preset": "tiny"})
        with pytest.raises(EngineError, match="refused the access token"):
            EngineClient(engine.url, "wrong").job(job["job_id"])
    with FakeEngine(api_version=2) as engine:
        with pytest.raises(EngineError, match="speaks API version 2 but this add-on needs version 1"):
            EngineClient(engine.url).health()


def test_client_unreachable_is_a_sentence_and_quick():
    import time

    from headsculpt_blender.client import EngineClient, EngineError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(EngineError, match=rf"The engine at http://127.0.0.1:{port} cannot be reached"):
        EngineClient(f"http://127.0.0.1:{port}").health()
    assert time.monotonic() - start < 2.0


def test_engine_python_detection_and_options(tmp_path):
    from headsculpt_blender.client import EngineError
    from headsculpt_blender.engine import EngineSettings, LocalEngine, detect_engine_python, parse_extra_args

    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    assert detect_engine_python(nested) == str(python)
    assert parse_extra_args('--preset-limit draft --set "a=b c"') == ("--preset-limit", "draft", "--set", "a=b c")
    with pytest.raises(EngineError, match="quoting"):
        parse_extra_args('--set "open')
    settings = EngineSettings(python=str(python), data_dir="/d", models="tiny",
                              back_view_token_file="/t.bin", extra_args=("--x",))
    assert LocalEngine().command(settings) == [str(python), "-m", "headsculpt_engine", "serve", "--host",
                                               "127.0.0.1", "--port", "0", "--data", "/d", "--models", "tiny",
                                               "--back-view-token", "/t.bin", "--x"]
    with pytest.raises(EngineError, match="does not exist"):
        LocalEngine().command(EngineSettings(python=str(tmp_path / "missing")))


def fake_engine_python(tmp_path: Path, api_version: int = 1, crash: bool = False) -> Path:
    """An executable that behaves like `python -m headsculpt_engine serve`: handshake file, token, API."""
    script = tmp_path / "fake-python"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, signal, sys, time
        sys.path.insert(0, {str(HERE)!r})
        args = sys.argv[1:]
        assert args[:3] == ["-m", "headsculpt_engine", "serve"], args
        if {crash!r}:
            print("engine: error: the models folder does not exist", flush=True)
            sys.exit(2)
        data = args[args.index("--data") + 1]
        from fake_engine import FakeEngine
        engine = FakeEngine(api_version={api_version}, token="tok").__enter__()
        with open(os.path.join(data, "token"), "w") as handle:
            handle.write("tok\\n")
        with open(os.path.join(data, "server.json"), "w") as handle:
            json.dump({{"url": engine.url, "token_file": os.path.join(data, "token"), "pid": os.getpid(),
                        "api_version": {api_version}}}, handle)
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        while True:
            time.sleep(0.1)
    """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_local_engine_starts_connects_and_stops(tmp_path):
    from headsculpt_blender.engine import EngineSettings, LocalEngine, connect

    local = LocalEngine()
    settings = EngineSettings(python=str(fake_engine_python(tmp_path)), data_dir=str(tmp_path / "data"))
    import headsculpt_blender.engine as engine_module
    saved, engine_module.LOCAL = engine_module.LOCAL, local
    try:
        client = connect(settings)
        assert client.token == "tok" and client.health()["api_version"] == 1
        process = local._process
        assert local.running
        local.start(settings)  # same settings: the running process is kept
        assert local._process is process
    finally:
        local.stop()
        engine_module.LOCAL = saved
    assert process.poll() is not None and not local.running


def test_local_engine_that_dies_is_reported(tmp_path):
    from headsculpt_blender.client import EngineError
    from headsculpt_blender.engine import EngineSettings, LocalEngine

    local = LocalEngine()
    settings = EngineSettings(python=str(fake_engine_python(tmp_path, crash=True)), data_dir=str(tmp_path / "d"))
    local.start(settings)
    with pytest.raises(EngineError, match="stopped while starting: engine: error: the models folder does not"):
        local.wait_ready(settings, timeout_s=30)
    local.stop()


def test_preferences_snapshot(scene):
    from headsculpt_blender import preferences
    from headsculpt_blender.client import EngineError

    prefs = preferences.preferences()
    prefs.engine_mode, prefs.models, prefs.models_folder = "local", "folder", "/models/sd15"
    prefs.engine_python, prefs.extra_args = "/opt/venv/bin/python", "--preset-limit draft"
    prefs.data_dir = ""  # empty: the default folder (another test may have set one)
    settings = preferences.engine_settings(prefs)
    assert settings.mode == "local" and settings.models == "/models/sd15"
    assert settings.python == "/opt/venv/bin/python" and settings.extra_args == ("--preset-limit", "draft")
    assert Path(settings.data_dir) == preferences.user_dir() / "engine"
    assert os.path.isdir(preferences.user_dir())
    prefs.extra_args = '"unclosed'
    with pytest.raises(EngineError):
        preferences.engine_settings(prefs)
    prefs.extra_args, prefs.models_folder = "", ""
    with pytest.raises(EngineError, match="models folder"):
        preferences.engine_settings(prefs)


def test_landmark_index_files(tmp_path):
    from headsculpt_blender.prior import load_landmark_indices

    (tmp_path / "ok.json").write_text(json.dumps(list(range(478))))
    assert load_landmark_indices(tmp_path / "ok.json", 5023) == list(range(478))
    (tmp_path / "gaps.json").write_text(json.dumps([-1] * 10 + list(range(468))))
    assert load_landmark_indices(tmp_path / "gaps.json", 5023)[:11] == [-1] * 10 + [0]
    (tmp_path / "far.json").write_text(json.dumps([6000] * 478))
    with pytest.raises(ValueError, match=r"outside 0..5022"):
        load_landmark_indices(tmp_path / "far.json", 5023)
    np.save(tmp_path / "floats.npy", np.zeros(478))
    with pytest.raises(ValueError, match="must hold 478 integers"):
        load_landmark_indices(tmp_path / "floats.npy", 5023)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 478, dtype=object))
    with pytest.raises(ValueError, match="cannot be read"):  # pickled content is never loaded
        load_landmark_indices(tmp_path / "objects.npy", 5023)
    with pytest.raises(ValueError, match="cannot be read"):
        load_landmark_indices(tmp_path / "missing.json", 5023)


def test_unregister_stops_the_local_engine(tmp_path, addon):
    from headsculpt_blender import engine

    settings = engine.EngineSettings(python=str(fake_engine_python(tmp_path)), data_dir=str(tmp_path / "data"))
    engine.LOCAL.start(settings)
    engine.LOCAL.wait_ready(settings, timeout_s=60)
    process = engine.LOCAL._process
    assert process.poll() is None
    addon.unregister()
    try:
        assert process.poll() is not None and not engine.LOCAL.running
    finally:
        addon.register()
