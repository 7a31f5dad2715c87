"""Head prior without rendering: loading and validation, normalisation, signed distance, density,
landmark files, drawing a landmark map from given points."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from headsculpt_engine.errors import InputError
from headsculpt_engine.prior.density import density_prior
from headsculpt_engine.prior.frame import NORMALISED_RADIUS, PriorTransform
from headsculpt_engine.prior.head import HeadPrior, load_prior
from headsculpt_engine.prior.landmark_map import (GROUP_COLOURS, IRIS_COLOURS, draw_landmark_map, landmark_groups,
                                                  mediapipe_connection_sets)
from headsculpt_engine.prior.landmarks import NUM_LANDMARKS, embedding_from_vertex_indices
from headsculpt_engine.prior.meshio import MeshArrays, clean_mesh


def sphere_arrays(radius: float = 1.0, center=(0.0, 0.0, 0.0)) -> MeshArrays:
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    return MeshArrays(np.asarray(mesh.vertices + np.asarray(center), dtype=np.float32),
                      np.asarray(mesh.faces, dtype=np.int32))


@pytest.fixture(scope="module")
def sphere_prior() -> HeadPrior:
    # Off-centre and not of radius 0.7, so normalisation has work to do.
    return load_prior(sphere_arrays(radius=2.0, center=(0.5, -1.0, 3.0)), detect_landmarks=False, sdf_resolution=64)


# --- loading and validation ----------------------------------------------------------------------


def test_rejects_empty_mesh():
    with pytest.raises(InputError, match="empty"):
        clean_mesh(MeshArrays(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32)))


def test_rejects_non_finite_vertices():
    mesh = sphere_arrays()
    mesh.vertices[5, 1] = np.nan
    mesh.vertices[7, 0] = np.inf
    with pytest.raises(InputError, match="2 vertices with non-finite"):
        clean_mesh(mesh)


def test_rejects_out_of_range_faces():
    mesh = sphere_arrays()
    mesh.faces[3, 2] = len(mesh.vertices)
    with pytest.raises(InputError, match="out of range"):
        clean_mesh(mesh)
    mesh.faces[3, 2] = -1
    with pytest.raises(InputError, match="out of range"):
        clean_mesh(mesh)


def test_rejects_too_few_faces_after_dropping_degenerate_and_duplicates():
    box = trimesh.creation.box()  # 12 faces
    with pytest.raises(InputError, match="only 12 usable faces, fewer than 100"):
        clean_mesh(MeshArrays(box.vertices, box.faces))
    # 60 real faces, padded with duplicates and degenerate faces beyond 100: still too few.
    sphere = sphere_arrays()
    faces = sphere.faces[:60]
    padded = np.concatenate([faces, faces[:, [1, 2, 0]], np.array([[0, 0, 1]] * 30)])
    with pytest.raises(InputError, match="only 60 usable faces"):
        clean_mesh(MeshArrays(sphere.vertices, padded))


def test_rejects_too_many_faces():
    vertices = np.random.default_rng(0).random((100, 3)).astype(np.float32)
    faces = np.tile(np.array([[0, 1, 2]], np.int32), (2_000_001, 1))
    with pytest.raises(InputError, match="2,000,001 faces, more than the 2,000,000"):
        clean_mesh(MeshArrays(vertices, faces))


def test_cleaning_triangulates_and_drops_degenerate_and_duplicate_faces():
    sphere = sphere_arrays()
    quads = np.concatenate([sphere.faces, sphere.faces[:, :1]], axis=1)  # (M, 4) quads with a repeated corner
    cleaned = clean_mesh(MeshArrays(sphere.vertices, quads))
    # Fan triangles (0,1,2) and (0,2,0): the second is degenerate and dropped.
    np.testing.assert_array_equal(cleaned.faces, sphere.faces)
    dup = np.concatenate([sphere.faces, sphere.faces[:10, ::-1], [[0, 0, 5]]])
    assert len(clean_mesh(MeshArrays(sphere.vertices, dup)).faces) == len(sphere.faces)
    # A face whose corners are distinct but collinear has zero area.
    verts = np.concatenate([sphere.vertices, [[0, 0, 0], [1, 0, 0], [2, 0, 0]]]).astype(np.float32)
    n = len(sphere.vertices)
    flat = np.concatenate([sphere.faces, [[n, n + 1, n + 2]]])
    assert len(clean_mesh(MeshArrays(verts, flat)).faces) == len(sphere.faces)
    assert cleaned.faces.dtype == np.int32 and cleaned.vertices.dtype == np.float32


def test_file_errors_say_what_to_do(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_prior(tmp_path / "missing.obj")
    (tmp_path / "head.fbx").write_text("x")
    with pytest.raises(InputError, match="unsupported format"):
        load_prior(tmp_path / "head.fbx")
    (tmp_path / "empty.obj").write_text("# nothing here\n")
    with pytest.raises(InputError, match="empty"):
        load_prior(tmp_path / "empty.obj")


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb"])
def test_loads_each_file_format_to_the_same_prior(tmp_path, suffix):
    sphere = sphere_arrays(radius=0.1, center=(0.0, 1.5, 0.0))
    path = tmp_path / f"head{suffix}"
    trimesh.Trimesh(sphere.vertices, sphere.faces, process=False).export(path)
    prior = load_prior(path, detect_landmarks=False, sdf_resolution=16)
    np.testing.assert_allclose(prior.canonical_vertices(), sphere.vertices, atol=1e-6)
    np.testing.assert_array_equal(prior.faces, sphere.faces)
    assert not prior.is_flame


# --- canonical frame -------------------------------------------------------------------------------


def test_normalisation_centres_scales_and_inverts_exactly(sphere_prior):
    v = sphere_prior.vertices.astype(np.float64)
    np.testing.assert_allclose(0.5 * (v.min(0) + v.max(0)), 0.0, atol=1e-6)
    assert np.linalg.norm(v, axis=1).max() == pytest.approx(NORMALISED_RADIUS, rel=1e-5)
    np.testing.assert_allclose(sphere_prior.transform.center, [0.5, -1.0, 3.0], atol=1e-5)
    # numpy and torch give the same round trip.
    points = np.random.default_rng(1).normal(size=(50, 3))
    t = sphere_prior.transform
    np.testing.assert_allclose(t.to_canonical(t.to_normalised(points)), points, atol=1e-12)
    tp = torch.as_tensor(points, dtype=torch.float64)
    np.testing.assert_allclose(t.to_normalised(tp).numpy(), t.to_normalised(points), atol=1e-12)
    again = PriorTransform.from_dict(t.as_dict())
    np.testing.assert_array_equal(again.center, t.center)
    assert again.scale == t.scale


@pytest.fixture(scope="module")
def flame_prior(flame_template) -> HeadPrior:
    # The grid lands in the session's cache folder; later loads of the fixture reuse it.
    return load_prior(flame_template, detect_landmarks=False)


def test_flame_topology_counts():
    from headsculpt_engine.prior.head import is_flame_topology

    assert is_flame_topology(5023, 9976) and is_flame_topology(5023, 10034)
    assert not is_flame_topology(5023, 9000) and not is_flame_topology(5118, 9976)


def test_flame_topology_is_recognised(flame_prior):
    prior = flame_prior
    assert prior.is_flame and len(prior.vertices) == 5023 and len(prior.faces) == 9976
    # Real scale: about 0.2 m wide in the file's frame.
    width = np.ptp(prior.canonical_vertices()[:, 0])
    assert 0.15 < width < 0.3


# --- signed distance and density -------------------------------------------------------------------


def test_sphere_signed_distance_matches_analytic(sphere_prior):
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(20000, 3, generator=gen) * 2 - 1  # the grid's box
    got = sphere_prior.signed_distance(points)
    exact = points.norm(dim=-1) - NORMALISED_RADIUS
    # Within 1% of the radius (the icosphere's own facets are part of the error).
    assert (got - exact).abs().max().item() < 0.01 * NORMALISED_RADIUS
    assert got.shape == (20000,)
    # Beyond the box: positive, and never less than the true distance (triangle inequality).
    far = torch.nn.functional.normalize(torch.randn(1000, 3, generator=gen), dim=-1) * 1.8
    got_far = sphere_prior.signed_distance(far)
    assert (got_far > 0.3).all() and (got_far >= far.norm(dim=-1) - NORMALISED_RADIUS - 0.01).all()
    assert sphere_prior.signed_distance(points.reshape(100, 200, 3)).shape == (100, 200)


def test_signed_distance_is_differentiable(sphere_prior):
    points = torch.tensor([[0.3, 0.2, -0.1], [0.0, 0.5, 0.5]], requires_grad=True)
    sphere_prior.signed_distance(points).sum().backward()
    direction = points.detach() / points.detach().norm(dim=-1, keepdim=True)
    cos = torch.nn.functional.cosine_similarity(points.grad, direction, dim=-1)
    assert (cos > 0.99).all()


def test_open_flame_head_signs_by_winding_number(flame_prior):
    prior = flame_prior
    t = prior.transform
    v = prior.canonical_vertices()
    top = v[np.argmax(v[:, 1])]
    # Inside the skull: points below the crown, around the head's centre line.
    skull = np.array([[0.0, top[1] - d, v[:, 2].mean()] for d in (0.03, 0.06, 0.09)])
    head_centre = 0.5 * (v.min(0) + v.max(0))
    # 5 cm outside: along rays from the skull's centre through surface points of the upper head.
    upper = v[v[:, 1] > head_centre[1] + 0.02]
    skull_centre = np.array([0.0, head_centre[1] + 0.03, head_centre[2]])
    dirs = upper - skull_centre
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    outside = upper + 0.05 * dirs
    d_in = prior.signed_distance(torch.as_tensor(t.to_normalised(skull), dtype=torch.float32))
    d_out = prior.signed_distance(torch.as_tensor(t.to_normalised(outside), dtype=torch.float32))
    assert (d_in < 0).all()
    assert (d_out > 0).all()
    # Below the open neck, on the axis, is outside as well (winding number, not ray parity).
    below = t.to_normalised(np.array([[0.0, v[:, 1].min() - 0.05, head_centre[2]]]))
    assert prior.signed_distance(torch.as_tensor(below, dtype=torch.float32)).item() > 0


def test_density_prior_is_finite_non_negative_and_rises_at_the_surface():
    d = torch.cat([torch.linspace(-1, 1, 400001, dtype=torch.float32), torch.zeros(1)])
    sigma = density_prior(d)
    assert torch.isfinite(sigma).all() and (sigma >= 0).all()
    extremes = density_prior(torch.tensor([-1e30, -1.0, 0.0, 1.0, 1e30, float("inf"), -float("inf")]))
    assert torch.isfinite(extremes).all() and (extremes >= 0).all()
    # Eq. 3 values: tau(0) = 1/(2a) = 100, softplus^-1(100) = 100 (to float precision); deep inside
    # tau -> 1/a = 200; well outside, zero.
    a = 0.005
    assert density_prior(torch.tensor(0.0)).item() == pytest.approx(100.0, rel=1e-6)
    assert density_prior(torch.tensor(-1.0)).item() == pytest.approx(1 / a, rel=1e-6)
    assert density_prior(torch.tensor(0.1)).item() == 0.0
    # The prior's edge is the surface: the density changes fastest at d = 0 ...
    dd = torch.linspace(-0.05, 0.05, 2001, dtype=torch.float64, requires_grad=True)
    density_prior(dd).sum().backward()
    steepest = dd[dd.grad.abs().argmax()].item()
    assert abs(steepest) < 1e-3
    # ... and its gradients are finite everywhere, including where the max(0, .) cuts.
    d2 = torch.linspace(-1, 1, 10001, requires_grad=True)
    density_prior(d2).sum().backward()
    assert torch.isfinite(d2.grad).all()


def test_prior_density_uses_the_signed_distance(sphere_prior):
    points = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.9], [0.7, 0.0, 0.0]])
    sigma = sphere_prior.density(points)
    assert sigma[0].item() == pytest.approx(200.0, rel=1e-4)  # deep inside
    assert sigma[1].item() == 0.0  # 0.2 outside
    assert 50.0 < sigma[2].item() < 150.0  # on the surface


def test_prior_round_trips_through_save_and_load(sphere_prior, tmp_path):
    sphere_prior.save(tmp_path / "prior")
    again = HeadPrior.load(tmp_path / "prior")
    np.testing.assert_array_equal(again.vertices, sphere_prior.vertices)
    np.testing.assert_array_equal(again.faces, sphere_prior.faces)
    assert again.content_hash == sphere_prior.content_hash
    points = torch.rand(100, 3) - 0.5
    torch.testing.assert_close(again.signed_distance(points), sphere_prior.signed_distance(points))
    with pytest.raises(InputError, match="incomplete or damaged"):
        HeadPrior.load(tmp_path / "nothing")


def test_cache_reuses_the_grid(tmp_path):
    from headsculpt_engine.prior.head import prior_cache_dir

    mesh = sphere_arrays(radius=0.3)
    first = load_prior(mesh, detect_landmarks=False, sdf_resolution=16)
    assert not list(prior_cache_dir(first.content_hash).glob("sdf_grid_*.npy"))  # built on first use
    first.signed_distance(torch.zeros(1, 3))
    grid_file = next(prior_cache_dir(first.content_hash).glob("sdf_grid_*.npy"))
    marker = np.load(grid_file)
    marker[0, 0, 0] = 123.0  # a value the computation cannot give; the second load must read it
    np.save(grid_file, marker)
    second = load_prior(mesh, detect_landmarks=False, sdf_resolution=16)
    assert second.sdf_grid.values[0, 0, 0] == 123.0
    with np.load(prior_cache_dir(first.content_hash) / "mesh.npz") as cached:
        np.testing.assert_array_equal(cached["vertices"], first.vertices)
        np.testing.assert_array_equal(cached["faces"], first.faces)
        assert float(cached["scale"]) == first.transform.scale


# --- landmark files ------------------------------------------------------------------------------


def test_landmark_file_embeds_vertices(tmp_path, sphere_prior):
    rng = np.random.default_rng(3)
    indices = rng.integers(0, len(sphere_prior.vertices), NUM_LANDMARKS)
    indices[10] = -1
    path = tmp_path / "marks.npy"
    np.save(path, indices)
    mesh = sphere_arrays(radius=2.0, center=(0.5, -1.0, 3.0))
    prior = load_prior(mesh, landmark_file=path, sdf_resolution=64)
    points = prior.landmark_points()
    ok = indices >= 0
    np.testing.assert_allclose(points[ok], prior.vertices[indices[ok]], atol=1e-6)
    assert np.isnan(points[10]).all() and prior.landmarks.confidence[10] == 0.0
    assert (prior.landmarks.confidence[ok] == 1.0).all()


def test_landmark_file_rejections(tmp_path, sphere_prior):
    faces = sphere_prior.faces
    with pytest.raises(InputError, match="must hold 478 integer vertex indices"):
        embedding_from_vertex_indices(np.zeros(10, np.int64), faces, len(sphere_prior.vertices))
    with pytest.raises(InputError, match="must hold 478 integer"):
        embedding_from_vertex_indices(np.zeros(478, np.float32), faces, len(sphere_prior.vertices))
    with pytest.raises(InputError, match="names vertex 99999"):
        embedding_from_vertex_indices(np.full(478, 99999), faces, len(sphere_prior.vertices))
    bad = tmp_path / "pickled.npy"
    np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="Could not read the landmark file"):
        load_prior(sphere_arrays(), landmark_file=bad, sdf_resolution=16)


# --- drawing ---------------------------------------------------------------------------------------


def test_stored_connection_sets_are_mediapipes():
    """The maps draw from the stored copy of mediapipe's FaceMesh connection sets: it must equal them."""
    stored = {g.name: g.edges.tolist() for g in landmark_groups()}
    assert stored == mediapipe_connection_sets()
    assert len(stored["face_oval"]) == 36 and len(stored["lips"]) == 40


def test_drawing_uses_exact_spec_colours_and_culls_hidden_points():
    groups = {g.name: g for g in landmark_groups()}
    assert set(groups) == set(GROUP_COLOURS)
    assert GROUP_COLOURS["face_oval"] == (10, 200, 10) and GROUP_COLOURS["lips"] == (10, 180, 10)
    # Put every landmark on a circle; each group lights pixels of its own colour only.
    angle = np.linspace(0, 2 * np.pi, NUM_LANDMARKS, endpoint=False)
    xy = np.stack([256 + 200 * np.cos(angle), 256 + 200 * np.sin(angle)], axis=1)
    visible = np.ones(NUM_LANDMARKS, bool)
    image = draw_landmark_map(xy, visible, 512, 512)
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    allowed = {(0, 0, 0)} | set(GROUP_COLOURS.values()) | set(IRIS_COLOURS.values())
    assert colours <= allowed and len(colours) > 3
    # The iris centre is a filled 4x4 square at its pixel.
    x, y = np.floor(xy[468]).astype(int)
    assert (image[y - 2:y + 2, x - 2:x + 2] == IRIS_COLOURS[468]).all()
    # Hiding landmarks removes the lines that touch them.
    hidden = visible.copy()
    hidden[list({int(i) for i in groups["lips"].edges.ravel()})] = False
    without_lips = draw_landmark_map(xy, hidden, 512, 512)
    assert not (without_lips == GROUP_COLOURS["lips"]).all(-1).any()
    assert (image == GROUP_COLOURS["lips"]).all(-1).any()
    # Oval only.
    oval = draw_landmark_map(xy, visible, 512, 512, oval_only=True)
    assert {tuple(c) for c in oval.reshape(-1, 3)} == {(0, 0, 0), GROUP_COLOURS["face_oval"]}


def test_drawing_survives_points_off_the_image_and_nan():
    xy = np.full((NUM_LANDMARKS, 2), 1e12)
    xy[:5] = np.nan
    image = draw_landmark_map(xy, np.ones(NUM_LANDMARKS, bool), 64, 48)
    assert image.shape == (48, 64, 3) and not image.any()
