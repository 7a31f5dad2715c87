"""A skinned, morph-targeted .glb prior: its rig is read (prior/rig.py), kept with the saved prior, and
carried to the avatar, whose avatar.glb then has a skin and morph targets (mesh/rig_transfer.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from headsculpt_engine.config import preset_config
from headsculpt_engine.mesh.rig_transfer import write_rigged_glb
from headsculpt_engine.prior import builtin_prior, load_prior
from headsculpt_engine.prior.head import HeadPrior
from headsculpt_engine.prior.rig import PriorRig, accessor_array

NAMES = ["root", "neck", "jaw"]


def rigged_head(tmp_path):
    """The built-in head as a .glb with three joints (jaw on the lower third) and one morph target
    `lower_up` lifting the lower third by 1 cm; returns (path, canonical vertices, jaw weight, delta)."""
    base = builtin_prior()
    v = base.transform.to_canonical(base.vertices.astype(np.float64)).astype(np.float32)
    f = base.faces.astype(np.int64)
    lo, hi = v[:, 1].min(), v[:, 1].max()
    jaw = np.clip((lo + 0.4 * (hi - lo) - v[:, 1]) / (0.1 * (hi - lo)), 0.0, 1.0).astype(np.float32)
    joints = np.tile(np.array([[2, 1, 0, 0]]), (len(v), 1))
    weights = np.stack([jaw, 1.0 - jaw, np.zeros_like(jaw), np.zeros_like(jaw)], axis=1).astype(np.float32)
    centre = v.mean(axis=0)
    nodes = [{"name": "root", "translation": centre.tolist(), "children": [1]},
             {"name": "neck", "translation": [0.0, 0.02, 0.0], "children": [2]},
             {"name": "jaw", "translation": [0.0, 0.0, 0.03], "children": []}]
    world = [centre, centre + [0, 0.02, 0], centre + [0, 0.02, 0.03]]
    inverse_bind = np.stack([np.linalg.inv(np.block([[np.eye(3), np.array(w)[:, None]], [np.zeros((1, 3)), 1]])).T
                             for w in world]).astype(np.float32)
    delta = np.zeros_like(v)
    delta[:, 1] = 0.01 * jaw
    rig = PriorRig(vertices=v, faces=f, joints=joints, weights=weights, inverse_bind=inverse_bind, nodes=nodes,
                   targets=delta[None], target_names=["lower_up"], target_weights=[0.0])
    path = tmp_path / "rigged_head.glb"
    write_rigged_glb(path, v, f, np.zeros((len(v), 2), np.float32), Image.new("RGB", (4, 4)), rig,
                     joints, weights, delta[None])
    return path, v, jaw, delta


def gltf_with_blob(path):
    from pygltflib import GLTF2

    gltf = GLTF2().load(str(path))
    return gltf, gltf.binary_blob()


def test_a_rigged_glb_prior_keeps_its_rig_through_load_and_save(tmp_path):
    path, v, jaw, delta = rigged_head(tmp_path)
    prior = load_prior(path, detect_landmarks=False)
    rig = prior.rig
    assert rig is not None and [n["name"] for n in rig.nodes] == NAMES and rig.target_names == ["lower_up"]
    assert np.allclose(rig.vertices, v) and np.allclose(rig.targets[0], delta)
    assert np.allclose(rig.weights[:, 0], jaw) and (rig.joints[:, 0] == 2).all()
    prior.save(tmp_path / "saved")
    again = HeadPrior.load(tmp_path / "saved").rig
    assert again.nodes == rig.nodes and np.array_equal(again.weights, rig.weights)
    assert np.array_equal(again.inverse_bind, rig.inverse_bind)
    plain = tmp_path / "plain.glb"
    trimesh.Trimesh(v, rig.faces, process=False).export(plain)
    assert load_prior(plain, detect_landmarks=False).rig is None


@pytest.mark.slow
def test_avatar_glb_from_a_rigged_prior_has_a_skin_and_morph_targets(tmp_path):
    """Acceptance 3: a tiny fine run on the rigged prior; avatar.glb has the skin and the morph target."""
    from headsculpt_engine.mesh.export import export_avatar
    from headsculpt_engine.stages.fine import run_fine

    path, v, jaw, delta = rigged_head(tmp_path)
    prior = load_prior(path, detect_landmarks=False)
    cfg = preset_config("tiny")
    cfg.fine.iterations = 0
    fine = run_fine(cfg, prior, None, tmp_path / "fine", None, torch.device("cpu"))
    export_avatar(fine, prior, cfg.export, tmp_path / "result", {"prompt": "tiny"})

    gltf, blob = gltf_with_blob(tmp_path / "result" / "avatar.glb")
    (skin,) = gltf.skins
    assert [gltf.nodes[j].name for j in skin.joints] == NAMES
    (primitive,) = gltf.meshes[0].primitives
    assert gltf.meshes[0].extras["targetNames"] == ["lower_up"] and len(primitive.targets) == 1
    positions = accessor_array(gltf, blob, primitive.attributes.POSITION)
    joints = accessor_array(gltf, blob, primitive.attributes.JOINTS_0)
    weights = accessor_array(gltf, blob, primitive.attributes.WEIGHTS_0)
    morph = accessor_array(gltf, blob, primitive.targets[0]["POSITION"])
    assert len(positions) == len(joints) == len(weights) == len(morph)
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-5) and joints.max() < 3
    # The avatar's lower third follows the jaw and lifts with the target, as the prior's nearest points do.
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(v).query(positions)
    jaw_weight = np.where(joints == 2, weights, 0.0).sum(axis=1)
    assert np.corrcoef(jaw_weight, jaw[nearest])[0, 1] > 0.9
    assert np.corrcoef(morph[:, 1], delta[nearest, 1])[0, 1] > 0.9
    # Still the textured avatar: trimesh reads it with its UVs and texture.
    mesh = trimesh.load(tmp_path / "result" / "avatar.glb", force="mesh")
    assert mesh.visual.uv is not None and mesh.visual.material.baseColorTexture.size == (256, 256)
    info = json.loads((tmp_path / "result" / "avatar.json").read_text())["export"]["rig"]
    assert info == {"joints": NAMES, "morph_targets": ["lower_up"]}


def test_accessors_read_strided_and_normalized_data():
    import pygltflib as g

    # Two interleaved VEC2 float rows (stride 12: 8 bytes of data, 4 of padding), then normalized bytes.
    floats = np.array([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]], dtype=np.float32).tobytes()
    blob = floats + np.array([255, 0, 51, 204], dtype=np.uint8).tobytes()
    gltf = g.GLTF2(bufferViews=[g.BufferView(buffer=0, byteOffset=0, byteLength=24, byteStride=12),
                                g.BufferView(buffer=0, byteOffset=24, byteLength=4)],
                   accessors=[g.Accessor(bufferView=0, componentType=g.FLOAT, count=2, type=g.VEC2),
                              g.Accessor(bufferView=1, componentType=g.UNSIGNED_BYTE, count=1, type=g.VEC4,
                                         normalized=True)])
    assert np.array_equal(accessor_array(gltf, blob, 0), [[1.0, 2.0], [3.0, 4.0]])
    assert np.allclose(accessor_array(gltf, blob, 1), [[1.0, 0.0, 0.2, 0.8]])
