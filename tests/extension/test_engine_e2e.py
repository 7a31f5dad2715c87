"""End to end: the add-on starts a real local engine (`headsculpt serve`, tiny models), and the panel's
operators generate on a FLAME head and on the built-in head, edit the result, and stop the engine."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import poll_until

pytestmark = [pytest.mark.bpy, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 900.0  # a tiny run takes well under a minute alone; the shared 2-core machine gets slack


@pytest.fixture(scope="module")
def local_engine(bpy, addon, tmp_path_factory):
    """Preferences for a local engine run by this interpreter (the project's venv) on tiny models."""
    from headsculpt_blender import engine, preferences

    prefs = preferences.preferences()
    data_dir = tmp_path_factory.mktemp("engine-data")
    yield prefs, data_dir
    process = engine.LOCAL._process
    engine.LOCAL.stop()
    assert process is None or process.poll() is not None, "the local engine was not stopped"


@pytest.fixture
def engine_scene(scene, local_engine):
    prefs, data_dir = local_engine
    prefs.engine_mode, prefs.engine_python, prefs.data_dir = "local", sys.executable, str(data_dir)
    prefs.models, prefs.extra_args = "tiny", ""
    return scene


def world_bounds(obj) -> tuple[np.ndarray, np.ndarray]:
    from mathutils import Vector

    corners = np.array([obj.matrix_world @ Vector(c) for c in obj.bound_box])
    return corners.min(axis=0), corners.max(axis=0)


def box_iou(a, b) -> float:
    low, high = np.maximum(a[0], b[0]), np.minimum(a[1], b[1])
    inter = np.prod(np.clip(high - low, 0, None))
    volume = lambda box: np.prod(box[1] - box[0])  # noqa: E731
    return float(inter / (volume(a) + volume(b) - inter))


def generate_on(bpy, scene, prior, prompt: str):
    st = scene.headsculpt
    st.prior, st.prompt_prefix, st.prompt, st.preset, st.seed = prior, "a head of", prompt, "tiny", 3
    assert bpy.ops.headsculpt.generate() == {"FINISHED"}
    poll_until(scene, lambda: st.result_object is not None or st.job_state in ("failed", "not imported"),
               timeout=JOB_TIMEOUT_S, interval=0.5)
    assert st.result_object is not None, st.last_error
    return st.result_object


def check_avatar(bpy, avatar, prior, prompt: str):
    from headsculpt_blender.properties import PROP_JOB, PROP_PRIOR, PROP_PROMPT, PROP_SEED

    assert avatar.type == "MESH" and len(avatar.data.polygons) > 100
    assert avatar.data.uv_layers
    images = [node.image for slot in avatar.material_slots if slot.material and slot.material.node_tree
              for node in slot.material.node_tree.nodes if node.type == "TEX_IMAGE" and node.image]
    assert images and images[0].size[0] > 0
    assert avatar[PROP_JOB] and avatar[PROP_PROMPT] == prompt and avatar[PROP_SEED] == 3
    assert avatar[PROP_PRIOR] == prior.name
    assert "HeadSculpt" in [c.name for c in avatar.users_collection]
    iou = box_iou(world_bounds(avatar), world_bounds(prior))
    print(f"\n{prior.name}: {len(avatar.data.polygons)} faces, world bounding-box IoU with the prior {iou:.3f}")
    assert iou >= 0.7, f"world bounding boxes of avatar and prior overlap with IoU {iou:.2f}"
    return iou


def test_generate_on_flame_then_edit(bpy, engine_scene, flame_template):
    from headsculpt_blender.properties import PROP_JOB, PROP_PARENT

    scene = engine_scene
    bpy.ops.wm.obj_import(filepath=str(flame_template))  # Z up: object rotated +90 degrees about X
    head = bpy.context.selected_objects[0]
    head.location = (0.3, 0.0, 0.0)
    avatar = generate_on(bpy, scene, head, "an old sailor")
    check_avatar(bpy, avatar, head, "a head of an old sailor")
    assert scene.headsculpt.preview_image is not None

    st = scene.headsculpt
    bpy.context.view_layer.objects.active = avatar
    st.edit_instruction = "make him older"
    assert bpy.ops.headsculpt.edit() == {"FINISHED"}
    poll_until(scene, lambda: st.result_object not in (None, avatar) or st.job_state in ("failed", "not imported"),
               timeout=JOB_TIMEOUT_S, interval=0.5)
    edited = st.result_object
    assert edited is not None and edited != avatar, st.last_error
    assert edited[PROP_PARENT] == avatar[PROP_JOB] and edited[PROP_JOB] != avatar[PROP_JOB]
    assert edited.data.uv_layers and len(edited.data.polygons) > 100


def test_generate_on_the_builtin_head(bpy, engine_scene):
    from headsculpt_blender.operators import base_head_path

    assert base_head_path() is not None, "flame_assets/base_head.obj is part of the repository"
    assert bpy.ops.headsculpt.add_base_head() == {"FINISHED"}
    head = engine_scene.headsculpt.prior
    assert head is not None and head.name == "HeadSculpt base head"
    avatar = generate_on(bpy, engine_scene, head, "a bronze statue")
    check_avatar(bpy, avatar, head, "a head of a bronze statue")


@pytest.fixture(scope="module")
def remote_engine(tmp_path_factory):
    """A real engine the add-on did not start (`headsculpt serve`, tiny models), reached by URL and token
    as a remote GPU machine is."""
    from server.engine_server import EngineServer

    with EngineServer(tmp_path_factory.mktemp("remote-engine")) as server:
        yield server


def test_generate_through_a_remote_engine(bpy, scene, remote_engine):
    from helpers import use_engine

    assert bpy.ops.headsculpt.add_base_head() == {"FINISHED"}
    head, st = scene.headsculpt.prior, scene.headsculpt
    objects_before = set(bpy.data.objects)

    use_engine(remote_engine.url, "not-the-token")
    st.prior, st.prompt_prefix, st.prompt, st.preset, st.seed = head, "a head of", "a marble bust", "tiny", 3
    assert bpy.ops.headsculpt.generate() == {"FINISHED"}  # the upload runs in the background
    poll_until(scene, lambda: bool(st.last_error), timeout=120, interval=0.2)
    assert "refused the access token" in st.last_error and st.job_state not in ("queued", "running")
    assert set(bpy.data.objects) == objects_before and st.prompt == "a marble bust"  # nothing lost or added

    use_engine(remote_engine.url, remote_engine.token)
    avatar = generate_on(bpy, scene, head, "a marble bust")
    check_avatar(bpy, avatar, head, "a head of a marble bust")


def test_the_panels_models_choice_wins_over_its_tiny_preset(bpy, engine_scene, tmp_path, monkeypatch):
    """Models: Default in the preferences with the panel's tiny preset loads the default ids: on this
    machine (no such models in its cache) the job fails with the missing-model sentence, which the panel
    shows with the way to Download models."""
    from headsculpt_blender import engine, preferences

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prefs = preferences.preferences()
    prefs.models = "default"
    try:
        assert bpy.ops.headsculpt.add_base_head() == {"FINISHED"}
        st = engine_scene.headsculpt
        st.prompt_prefix, st.prompt, st.preset, st.seed = "a head of", "a knight", "tiny", 3
        assert bpy.ops.headsculpt.generate() == {"FINISHED"}
        poll_until(engine_scene, lambda: st.job_state == "failed", timeout=JOB_TIMEOUT_S, interval=0.5)
        assert "--models" in engine.LOCAL._started_with and "default" in engine.LOCAL._started_with
        assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in st.last_error
        assert "not in the local Hugging Face cache" in st.last_error and "Download models" in st.last_error
        assert st.result_object is None
    finally:
        prefs.models = "tiny"
        engine.LOCAL.stop()  # the next test starts its engine with the tiny models again
