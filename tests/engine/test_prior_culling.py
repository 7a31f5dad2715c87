"""Back-face culling of the prior's shaded renders: it decides the outside whichever way a mesh
winds, keeps every face where it cannot tell, and leaves the render of a closed head unchanged."""
from __future__ import annotations

import numpy as np
import torch
import trimesh

from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.prior.builtin import builtin_mesh_path
from headsculpt_engine.prior.culling import facing_faces, outward_sign
from headsculpt_engine.prior.head import load_prior
from headsculpt_engine.prior.render import rasterize_prior

EYE_FRONT = np.array([[0.0, 0.0, 4.0]])


def sphere() -> tuple[np.ndarray, np.ndarray]:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.7)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def test_the_outside_is_found_for_either_winding():
    vertices, faces = sphere()
    near_side = vertices[faces].mean(axis=1)[:, 2] > 0.2
    far_side = vertices[faces].mean(axis=1)[:, 2] < -0.2
    for winding in (faces, faces[:, ::-1]):
        facing = facing_faces(vertices, winding, EYE_FRONT)[0]
        assert facing[near_side].all() and not facing[far_side].any()
    assert (outward_sign(vertices, faces) == 1).all() and (outward_sign(vertices, faces[:, ::-1]) == -1).all()


def test_inconsistent_winding_and_flat_parts_keep_every_face():
    vertices, faces = sphere()
    mixed = faces.copy()
    mixed[::7] = mixed[::7, ::-1]
    assert facing_faces(vertices, mixed, EYE_FRONT).all()
    plane = trimesh.creation.box(extents=(1.0, 1.0, 1e-6))
    assert facing_faces(np.asarray(plane.vertices), np.asarray(plane.faces), EYE_FRONT).all()


def test_a_closed_head_renders_the_same_with_culling():
    prior = load_prior(builtin_mesh_path(), detect_landmarks=False)
    cameras = orbit_cameras([0.0, -40.0, 40.0], [90.0, 85.0, 100.0], 4.0, 16.0, 96, 96)
    culled = rasterize_prior(prior.vertices, prior.faces, cameras, cull=True)
    full = rasterize_prior(prior.vertices, prior.faces, cameras)
    assert culled.mask.float().mean() > 0.3
    assert torch.equal(culled.triangle_id, full.triangle_id)
    assert torch.allclose(culled.barycentric, full.barycentric)
