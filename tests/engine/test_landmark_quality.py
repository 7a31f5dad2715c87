"""Checks of the fused landmarks that can fail, on the symmetric heads (the FLAME fixture and the
built-in head): mirror symmetry, agreement with views that fusion did not use, a smooth face oval;
and the orientation search (a head facing +X, or upside down, comes back in the file's own frame)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh

from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.prior import MeshArrays, builtin_prior, load_prior
from headsculpt_engine.prior.detect import DETECTION_FOV, DETECTION_RADIUS, DETECTION_SIZE, run_facemesh
from headsculpt_engine.prior.landmark_map import landmark_groups
from headsculpt_engine.prior.meshio import load_mesh_file
from headsculpt_engine.prior.preview import landmark_view_cameras
from headsculpt_engine.prior.render import SKIN_TONE, shade
from test_prior_landmarks import base_prior, flame_prior  # noqa: F401  (the shared prior fixtures)

MIRROR = np.array([-1.0, 1.0, 1.0])
# Views fusion never sees: between and beyond its azimuths, and off its polar angles.
HELD_OUT_VIEWS = ((-22.0, 86.0), (22.0, 94.0), (-8.0, 95.0), (8.0, 84.0))


@pytest.fixture(scope="module", params=["flame", "builtin"])
def head(request, flame_template):
    return load_prior(flame_template) if request.param == "flame" else builtin_prior()


def detection_like_cameras(views):
    return orbit_cameras([a for a, _ in views], [p for _, p in views], DETECTION_RADIUS, DETECTION_FOV,
                         DETECTION_SIZE, DETECTION_SIZE)


@pytest.fixture(scope="module")
def mirror_partner(base_prior):
    """MediaPipe's own left-right pairing of its landmarks: FaceMesh on a frontal render and on its
    mirror image; landmark i of the mirrored image, mirrored back, sits on i's partner in the original.
    Matched one-to-one (least total distance); kept where the pairing is its own inverse (-1 otherwise)."""
    from scipy.optimize import linear_sum_assignment

    camera = orbit_cameras([0.0], [90.0], DETECTION_RADIUS, DETECTION_FOV, 512, 512)
    image, _ = shade(base_prior.vertices, base_prior.faces, camera, tone=SKIN_TONE)
    original, flipped = run_facemesh([image[0], np.ascontiguousarray(image[0][:, ::-1])])
    back = flipped[:, :2].copy()
    back[:, 0] = image.shape[2] - back[:, 0]
    distance = np.linalg.norm(back[:, None] - original[None, :, :2], axis=-1)  # (i in flipped, j in original)
    _, partner = linear_sum_assignment(distance)
    # MediaPipe is not exactly mirror-equivariant (a few pixels here), hence the global matching.
    involution = partner[partner] == np.arange(len(partner))
    return np.where(involution, partner, -1)


def test_mirror_pairing_is_mediapipes(mirror_partner):
    # Known pairs of MediaPipe's topology: outer and inner eye corners, mouth corners, face-oval
    # points, iris centres; the nose tip (1), chin (152) and forehead top (10) are their own partners.
    known = {33: 263, 61: 291, 133: 362, 234: 454, 93: 323, 58: 288, 172: 397, 149: 378, 468: 473}
    assert all(mirror_partner[a] == b and mirror_partner[b] == a for a, b in known.items())
    assert mirror_partner[1] == 1 and mirror_partner[152] == 152 and mirror_partner[10] == 10
    assert (mirror_partner >= 0).sum() > 450


def symmetry_errors(prior, partner) -> np.ndarray:
    """Per paired landmark: distance between it and its partner mirrored across the head's plane
    x = 0 of the normalised frame, in units of the head's radius (0.7 normalised)."""
    points = prior.landmark_points()[:468]
    ok = partner[:468] >= 0
    return np.linalg.norm(points[ok] - points[partner[:468][ok]] * MIRROR, axis=1) / 0.7


def test_landmarks_mirror_their_partners(head, mirror_partner):
    # Tolerance: median 2%, 90th percentile 5% of the head's radius (FLAME: about 2 and 5 mm).
    errors = symmetry_errors(head, mirror_partner)
    assert np.median(errors) < 0.02, np.median(errors)
    assert np.percentile(errors, 90) < 0.05, np.percentile(errors, 90)


def test_landmarks_agree_with_held_out_views(head):
    cameras = detection_like_cameras(HELD_OUT_VIEWS)
    images, _ = shade(head.vertices, head.faces, cameras, tone=SKIN_TONE)
    detected = run_facemesh(images)
    points = torch.as_tensor(head.landmark_points(), dtype=torch.float32)
    xy, _ = cameras.project(points)
    visible = head.landmark_visibility(cameras).numpy()
    for view, marks in enumerate(detected):
        assert marks is not None, HELD_OUT_VIEWS[view]
        error = np.linalg.norm(xy[view].numpy() - marks[:, :2], axis=1)[visible[view]]
        # Tolerance at 256 px, where the face spans about 200 px: median 4 px, 90th percentile 9 px.
        assert np.median(error) < 4.0, (HELD_OUT_VIEWS[view], np.median(error))
        assert np.percentile(error, 90) < 9.0, (HELD_OUT_VIEWS[view], np.percentile(error, 90))


def oval_edges() -> np.ndarray:
    return next(group.edges for group in landmark_groups() if group.name == "face_oval")


def test_face_oval_has_no_long_edge(head):
    edges = oval_edges()
    points = head.landmark_points()
    length = np.linalg.norm(points[edges[:, 0]] - points[edges[:, 1]], axis=1)
    assert length.max() <= 2.5 * np.median(length), length.max() / np.median(length)
    # As the contact sheet draws it (front, left, right): the edges with both ends visible, in pixels.
    cameras = landmark_view_cameras(384)
    xy, _ = cameras.project(torch.as_tensor(points, dtype=torch.float32))
    visible = head.landmark_visibility(cameras).numpy()
    for view, name in enumerate(cameras.view_names()):
        if name == "back":
            continue
        shown = visible[view][edges].all(axis=1)
        assert shown.sum() >= 8, name
        pixels = torch.linalg.norm(xy[view, edges[shown, 0]] - xy[view, edges[shown, 1]], dim=-1).numpy()
        assert pixels.max() <= 2.5 * np.median(pixels), (name, pixels.max() / np.median(pixels))


# --- orientation ---------------------------------------------------------------------------------

# File frames the engine must turn back: the head facing +X (a quarter turn about +Y), and upside down.
TURNS = {"facing +X": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]),
         "upside down": np.diag([-1.0, -1.0, 1.0])}
# What the search tells the user it found, per turn.
TOLD = {"facing +X": "the file's +Y axis is up, +X faces front", "upside down": "the file's -Y axis is up, +Z faces front"}


@pytest.mark.parametrize("turn", list(TURNS))
def test_turned_flame_is_detected_and_its_avatar_comes_back_in_the_files_frame(turn, flame_template, flame_prior,
                                                                              tmp_path):
    from headsculpt_engine.config import preset_config
    from headsculpt_engine.mesh.export import export_avatar
    from headsculpt_engine.stages.fine import run_fine

    turned = TURNS[turn]
    mesh = load_mesh_file(flame_template)
    file_vertices = mesh.vertices.astype(np.float64) @ turned.T
    messages: list[str] = []
    prior = load_prior(MeshArrays(file_vertices.astype(np.float32), mesh.faces), cache_root=tmp_path / "cache",
                       sdf_resolution=64, progress=messages.append)
    assert any(TOLD[turn] in message for message in messages), messages
    # Found by turning it back, and the turn is kept with the prior.
    np.testing.assert_allclose(prior.transform.rotation @ turned, np.eye(3), atol=1e-9)
    prior.save(tmp_path / "saved")
    info = json.loads((tmp_path / "saved" / "prior.json").read_text())
    np.testing.assert_allclose(info["transform"]["rotation"], turned.T)
    # ... and in the run record.
    from headsculpt_engine.pipeline import _start_record

    cfg = preset_config("tiny")
    cfg.prompt = "a head"
    record = _start_record(tmp_path / "run", cfg, prior, kind="generate")
    np.testing.assert_allclose(record.data["prior"]["rotation"], turned.T)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["prior"]["rotation"] == record.data["prior"]["rotation"]
    # The same landmarks as on the upright file, carried into this file's frame.
    upright = flame_prior.transform.to_canonical(flame_prior.landmark_points())
    np.testing.assert_allclose(prior.transform.to_canonical(prior.landmark_points()), upright @ turned.T, atol=1e-5)

    # The avatar: the real fine stage at the tiny preset with no iterations (marching tetrahedra on the
    # prior's signed distance) and the real export; it must sit on the mesh as the file holds it.
    cfg.fine.iterations = 0
    fine = run_fine(cfg, prior, None, tmp_path / "fine", None, torch.device("cpu"))
    export_avatar(fine, prior, cfg.export, tmp_path / "result", {"prompt": turn})
    avatar = trimesh.load(tmp_path / "result" / "avatar.obj", force="mesh", process=False)
    import igl

    def distance_to(vertices: np.ndarray) -> np.ndarray:
        squared, _, _ = igl.point_mesh_squared_distance(np.asarray(avatar.vertices, dtype=np.float64), vertices,
                                                        mesh.faces.astype(np.int64))
        return np.sqrt(squared)

    on_file = distance_to(file_vertices)
    cell = 2.0 * cfg.coarse.bound / cfg.fine.tet_resolution / prior.transform.scale  # metres
    assert np.median(on_file) < 0.5 * cell, (np.median(on_file), cell)
    # Not left in the engine's upright frame.
    assert np.median(distance_to(mesh.vertices.astype(np.float64))) > 5.0 * np.median(on_file)


def test_a_rotated_transform_inverts_exactly_and_reads_old_priors():
    from headsculpt_engine.prior.frame import PriorTransform
    from headsculpt_engine.prior.orientation import axis_rotations

    rotations = axis_rotations()
    assert len(rotations) == 24 and np.allclose(rotations[0], np.eye(3))
    assert len({tuple(r.reshape(-1)) for r in rotations}) == 24
    assert all(np.isclose(np.linalg.det(r), 1.0) for r in rotations)
    points = np.random.default_rng(0).normal(size=(50, 3))
    base = PriorTransform.fit(points)
    for rotation in rotations:
        t = base.rotated(rotation)
        np.testing.assert_allclose(t.to_canonical(t.to_normalised(points)), points, atol=1e-12)
        np.testing.assert_allclose(t.to_normalised(points), base.to_normalised(points) @ rotation.T, atol=1e-12)
        as_torch = t.to_normalised(torch.as_tensor(points, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(as_torch, t.to_normalised(points), atol=1e-12)
        np.testing.assert_allclose(PriorTransform.from_dict(t.as_dict()).rotation, t.rotation)
    old = {"center": [0.0, 1.0, 2.0], "scale": 3.0}  # prior.json before the orientation search
    np.testing.assert_allclose(PriorTransform.from_dict(old).rotation, np.eye(3))


def test_landmark_render_does_not_import_the_head_module():
    import ast
    import inspect

    from headsculpt_engine.prior import landmark_render

    tree = ast.parse(inspect.getsource(landmark_render))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name and name.split(".")[-1] == "head" for name in imported), imported
