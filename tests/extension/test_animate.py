"""Make animatable (headsculpt_blender/animate.py): the avatar takes over its rigged FLAME prior's vertex
groups, shape keys (with drivers) and armature, poses and takes expressions with the prior mesh deleted,
and exports with Blender's own glTF and FBX exporters (read back here).

The slow tests use a real tiny engine run's avatar on the FLAME template (a marching-tetrahedra mesh
near the prior, not a copy of it), served to the add-on by the stand-in engine."""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_engine import FakeEngine
from helpers import poll_until, use_engine
from rigged_flame import KEY_NAMES, mouth_open_offsets, rig_flame

pytestmark = pytest.mark.bpy

# Stated thresholds (Acceptance 1).
CHIN_MOVES_M = 0.01  # 20 degrees of jaw move the avatar's chin by more than 1 cm on average
TOP_STILL_M = 1e-4  # and the top of the head by less than 0.1 mm
MIN_CORRELATION = 0.9  # per-vertex displacement of each shape key, avatar against prior, mouth region


def import_flame(bpy, path):
    before = set(bpy.data.objects)
    bpy.ops.wm.obj_import(filepath=str(path))
    (head,) = [obj for obj in bpy.data.objects if obj not in before]
    return head


def local_coordinates(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3)
    obj.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


def evaluated_local(bpy, obj) -> np.ndarray:
    bpy.context.view_layer.update()
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    co = np.empty(len(mesh.vertices) * 3)
    mesh.vertices.foreach_get("co", co)
    evaluated.to_mesh_clear()
    return co.reshape(-1, 3)


def generated_avatar(bpy, scene, head, glb: bytes | None = None):
    """Generate on `head` through the add-on; the stand-in engine returns `glb` (else the prior itself)."""
    st = scene.headsculpt
    with FakeEngine(result_glb=glb) as engine:
        use_engine(engine.url)
        st.prior, st.prompt, st.preset = head, "a knight", "tiny"
        assert bpy.ops.headsculpt.generate() == {"FINISHED"}
        poll_until(scene, lambda: st.result_object is not None)
    return st.result_object


def make_animatable(bpy, avatar) -> None:
    bpy.context.view_layer.objects.active = avatar
    assert bpy.ops.headsculpt.make_animatable() == {"FINISHED"}


def test_a_copy_of_the_prior_gets_its_weights_keys_drivers_and_armature(bpy, scene, flame_template, flame_smile):
    """The add-on's own path on an avatar that is the prior itself: everything carried over exactly."""
    head = import_flame(bpy, flame_template)
    rig = rig_flame(bpy, head, flame_smile)
    avatar = generated_avatar(bpy, scene, head)
    make_animatable(bpy, avatar)
    assert scene.headsculpt.status.endswith("3 vertex groups, 2 shape keys, armature FLAME rig")
    from scipy.spatial import cKDTree

    # The importer may reorder vertices: match them by position.
    _, match = cKDTree(local_coordinates(head)).query(local_coordinates(avatar))
    for name in ("root", "neck", "jaw"):
        ours = np.array([next((g.weight for g in v.groups if g.group == avatar.vertex_groups[name].index), 0.0)
                         for v in avatar.data.vertices])
        theirs = np.array([next((g.weight for g in v.groups if g.group == head.vertex_groups[name].index), 0.0)
                           for v in head.data.vertices])
        assert np.abs(ours - theirs[match]).max() < 1e-3, name
    keys = avatar.data.shape_keys.key_blocks
    assert [k.name for k in keys] == ["Basis", *KEY_NAMES]
    assert keys["smile"].slider_max == 1.5 and keys["mouth_open"].relative_key == keys["Basis"]
    expected = mouth_open_offsets(local_coordinates(head))[match]
    got = np.array([p.co for p in keys["mouth_open"].data]) - local_coordinates(avatar)
    assert np.abs(got - expected).max() < 1e-4
    (driver,) = avatar.data.shape_keys.animation_data.drivers
    assert driver.data_path == 'key_blocks["mouth_open"].value'
    assert driver.driver.expression == "mouth" and driver.driver.variables[0].targets[0].id == rig
    rig["mouth"] = 0.5
    rig.update_tag()
    moved = evaluated_local(bpy, avatar) - local_coordinates(avatar)
    assert keys["mouth_open"].value == pytest.approx(0.5) and np.abs(moved[:, 1]).max() == pytest.approx(0.005, abs=1e-4)
    (modifier,) = [m for m in avatar.modifiers if m.type == "ARMATURE"]
    assert modifier.object == rig and avatar.parent == rig
    assert np.allclose(np.array(avatar.matrix_world), np.array(head.matrix_world), atol=1e-6)


def test_make_animatable_refuses_a_bare_prior(bpy, scene, flame_template):
    head = import_flame(bpy, flame_template)
    avatar = generated_avatar(bpy, scene, head)
    bpy.context.view_layer.objects.active = avatar
    with pytest.raises(RuntimeError):
        bpy.ops.headsculpt.make_animatable()
    assert "nothing to make the avatar animatable with" in scene.headsculpt.last_error
    assert not avatar.vertex_groups and avatar.data.shape_keys is None


ENGINE_RIGGED_EXPORT = """
import sys
from pathlib import Path
import torch
from test_rig_transfer import rigged_head
from headsculpt_engine.config import preset_config
from headsculpt_engine.mesh.export import export_avatar
from headsculpt_engine.prior import load_prior
from headsculpt_engine.stages.fine import run_fine

if __name__ == "__main__":
    out = Path(sys.argv[1])
    path, *_ = rigged_head(out)
    prior = load_prior(path, detect_landmarks=False)
    cfg = preset_config("tiny")
    cfg.fine.iterations = 0
    export_avatar(run_fine(cfg, prior, None, out / "fine", None, torch.device("cpu")), prior, cfg.export,
                  out / "result", {})
"""


@pytest.mark.slow
def test_blender_reads_the_engines_rigged_avatar_glb(bpy, scene, tmp_path):
    """The engine side of point 2, read back by Blender's own glTF importer: an avatar made on a skinned,
    morph-targeted .glb prior (tests/engine/test_rig_transfer.py) arrives as a mesh on an armature with
    the prior's shape key. The engine runs in its own process, as it does for the add-on."""
    tests = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests / "engine"), os.environ.get("PYTHONPATH", "")]))
    script = tmp_path / "export_rigged.py"
    script.write_text(ENGINE_RIGGED_EXPORT)
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert bpy.ops.import_scene.gltf(filepath=str(tmp_path / "result" / "avatar.glb")) == {"FINISHED"}
    (armature,) = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    (avatar,) = [o for o in bpy.data.objects if o.type == "MESH" and o.name.startswith("avatar")]
    assert [b.name for b in armature.data.bones] == ["root", "neck", "jaw"]
    assert [k.name for k in avatar.data.shape_keys.key_blocks] == ["Basis", "lower_up"]
    assert {g.name for g in avatar.vertex_groups} == {"root", "neck", "jaw"}
    assert any(m.type == "ARMATURE" and m.object == armature for m in avatar.modifiers)


@pytest.fixture(scope="module")
def tiny_run_glb(tmp_path_factory, flame_template) -> bytes:
    """avatar.glb of a real tiny engine run (tiny random models, tiny preset) on the FLAME template."""
    out = tmp_path_factory.mktemp("tiny-run")
    run = subprocess.run([sys.executable, "-m", "headsculpt_engine", "generate", "--prompt", "a knight",
                          "--prior", str(flame_template), "--models", "tiny", "--preset", "tiny", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return (out / "result" / "avatar.glb").read_bytes()


@pytest.fixture
def animatable(bpy, scene, flame_template, flame_smile, tiny_run_glb):
    """The tiny run's avatar, made animatable from the rigged template: (avatar, rig, prior, its arrays)."""
    head = import_flame(bpy, flame_template)
    rig = rig_flame(bpy, head, flame_smile)
    avatar = generated_avatar(bpy, scene, head, tiny_run_glb)
    make_animatable(bpy, avatar)
    keys = head.data.shape_keys.key_blocks
    prior = {"rest": local_coordinates(head)}
    for name in KEY_NAMES:
        prior[name] = np.array([p.co for p in keys[name].data]) - prior["rest"]
    return avatar, rig, head, prior


@pytest.mark.slow
def test_tiny_run_avatar_poses_and_takes_expressions_without_the_prior(bpy, animatable):
    """Acceptance 1."""
    from scipy.spatial import cKDTree

    avatar, rig, head, prior = animatable
    bpy.data.objects.remove(head, do_unlink=True)  # the prior mesh goes; its armature stays
    assert len(avatar.data.vertices) > 1000 and avatar.parent == rig
    rest = local_coordinates(avatar)
    chin = (rest[:, 1] > 1.40) & (rest[:, 1] < 1.44) & (rest[:, 2] > 0.04)
    top = rest[:, 1] > 1.58
    assert chin.sum() > 5 and top.sum() > 20

    jaw = rig.pose.bones["jaw"]
    jaw.rotation_mode = "XYZ"
    jaw.rotation_euler = (math.radians(20.0), 0.0, 0.0)
    moved = np.linalg.norm(evaluated_local(bpy, avatar) - rest, axis=1)
    print(f"\njaw 20 deg: chin moves {moved[chin].mean() * 1000:.1f} mm, top of head {moved[top].max() * 1000:.4f} mm")
    assert moved[chin].mean() > CHIN_MOVES_M and moved[top].max() < TOP_STILL_M
    jaw.rotation_euler = (0.0, 0.0, 0.0)
    assert np.abs(evaluated_local(bpy, avatar) - rest).max() < 1e-6

    keys = avatar.data.shape_keys.key_blocks
    _, nearest = cKDTree(prior["rest"]).query(rest)
    mouth = (rest[:, 1] > 1.40) & (rest[:, 1] < 1.48) & (rest[:, 2] > 0.03)
    for name in KEY_NAMES:
        if name == "mouth_open":
            rig["mouth"] = 1.0  # through the copied driver
            rig.update_tag()  # a script's property change does not tag the depsgraph (the UI's does)
        else:
            keys[name].value = 1.0
        shift = evaluated_local(bpy, avatar) - rest
        expected = prior[name][nearest]
        correlation = np.corrcoef(shift[mouth].ravel(), expected[mouth].ravel())[0, 1]
        print(f"{name}: correlation {correlation:.3f} over {mouth.sum()} mouth vertices")
        assert keys[name].value == pytest.approx(1.0) and correlation > MIN_CORRELATION, name
        assert np.linalg.norm(shift[mouth], axis=1).mean() > 0.5 * np.linalg.norm(expected[mouth], axis=1).mean()
        rig["mouth"], keys[name].value = 0.0, 0.0
        rig.update_tag()


def glb_json(path) -> dict:
    """The JSON chunk of a glTF binary (header: magic, version, length; then chunk length and type)."""
    data = path.read_bytes()
    magic, _version, _length, chunk_length, chunk_type = struct.unpack_from("<4sIIII", data)
    assert magic == b"glTF" and chunk_type == 0x4E4F534A
    return json.loads(data[20:20 + chunk_length])


@pytest.mark.slow
def test_blender_gltf_and_fbx_exports_read_back_with_skin_and_morph_targets(bpy, animatable, tmp_path):
    """Acceptance 2: Blender's own exporters, read back (glTF by its JSON, FBX by Blender's importer)."""
    avatar, rig, _, _ = animatable
    bpy.ops.object.select_all(action="DESELECT")
    avatar.select_set(True)
    rig.select_set(True)
    glb_path, fbx_path = tmp_path / "avatar.glb", tmp_path / "avatar.fbx"
    assert bpy.ops.export_scene.gltf(filepath=str(glb_path), export_format="GLB", use_selection=True,
                                     export_skins=True, export_morph=True, export_animations=False) == {"FINISHED"}
    assert bpy.ops.export_scene.fbx(filepath=str(fbx_path), use_selection=True, object_types={"ARMATURE", "MESH"},
                                    add_leaf_bones=False, bake_anim=False) == {"FINISHED"}

    gltf = glb_json(glb_path)
    (skin,) = gltf["skins"]
    assert sorted(gltf["nodes"][j]["name"] for j in skin["joints"]) == ["jaw", "neck", "root"]
    (mesh,) = [m for m in gltf["meshes"] if m["name"] == avatar.data.name]
    assert mesh["extras"]["targetNames"] == list(KEY_NAMES)
    assert all(len(p["targets"]) == 2 and "JOINTS_0" in p["attributes"] and "WEIGHTS_0" in p["attributes"]
               for p in mesh["primitives"])

    bpy.ops.wm.read_homefile(use_empty=True)
    assert bpy.ops.import_scene.fbx(filepath=str(fbx_path)) == {"FINISHED"}
    (armature,) = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    (mesh_object,) = [o for o in bpy.data.objects if o.type == "MESH"]
    assert sorted(b.name for b in armature.data.bones) == ["jaw", "neck", "root"]
    assert [k.name for k in mesh_object.data.shape_keys.key_blocks][1:] == list(KEY_NAMES)
    assert {"root", "neck", "jaw"} <= {g.name for g in mesh_object.vertex_groups}
    assert any(m.type == "ARMATURE" and m.object == armature for m in mesh_object.modifiers)


def test_barycentric_weights_and_falloff(bpy, addon):
    from headsculpt_blender.animate import barycentric, falloff

    a, b, c = np.array([[0.0, 0, 0]]), np.array([[1.0, 0, 0]]), np.array([[0.0, 1, 0]])
    points = np.array([[0.25, 0.5, 0.3]])  # above the triangle: projected in the plane
    assert np.allclose(barycentric(points, a, b, c), [[0.25, 0.25, 0.5]])
    assert np.allclose(barycentric(np.array([[2.0, 0, 0]]), a, b, c), [[0.0, 1.0, 0.0]])  # clipped inside
    assert np.allclose(barycentric(points, a, a, a), [[1.0, 0.0, 0.0]])  # degenerate: finite
    assert np.allclose(falloff(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), 1.0, 3.0), [1.0, 1.0, 0.5, 0.0, 0.0])


def test_an_avatar_with_its_own_frame_gets_the_keys_in_that_frame(bpy, scene, flame_template, flame_smile):
    """Edited copies sit beside the original, and users move and scale avatars: the correspondence is
    made in the prior's frame and the displacements are carried into the avatar's."""
    from mathutils import Matrix, Vector

    head = import_flame(bpy, flame_template)
    rig_flame(bpy, head, flame_smile)
    avatar = generated_avatar(bpy, scene, head)
    world_points = np.array([avatar.matrix_world @ v.co for v in avatar.data.vertices])
    avatar.matrix_world = head.matrix_world @ Matrix.Diagonal((0.5, 0.5, 0.5, 1.0))
    for vertex, point in zip(avatar.data.vertices, world_points):  # the same place in the world
        vertex.co = avatar.matrix_world.inverted() @ Vector(point)
    make_animatable(bpy, avatar)
    got = np.array([p.co for p in avatar.data.shape_keys.key_blocks["mouth_open"].data]) - local_coordinates(avatar)
    assert np.abs(got[:, 1]).max() == pytest.approx(0.02, abs=2e-4)  # 1 cm in the prior is 2 units here
