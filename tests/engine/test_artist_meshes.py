"""Issue 14, item 4: head meshes as artists have them. Each variant of the built-in head (other units,
objects joined, eyeballs and a mouth interior inside, duplicate vertices, quads and n-gons in the file,
non-manifold fins) loads as a prior whose signed distance is right and whose guided landmarks sit on
the face; what cannot serve gets a sentence."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from headsculpt_engine.errors import InputError
from headsculpt_engine.prior import MeshArrays, load_prior
from headsculpt_engine.prior.assets import builtin_mesh_path
from headsculpt_engine.prior.keypoints import KEYPOINTS, template_landmarks
from headsculpt_engine.prior.meshio import MAX_FACES, clean_mesh
from test_mesh_hygiene import join, sphere  # Blender's Join leaves shells that do not touch


def base() -> tuple[np.ndarray, np.ndarray]:
    mesh = trimesh.load(str(builtin_mesh_path()), process=False, force="mesh")
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def eye_positions() -> np.ndarray:
    marks = template_landmarks()
    return marks[[468, 473]]  # iris centres


def with_interiors(v, f):
    """Eyeballs behind the irises and a mouth bag behind the lips, all inside the head."""
    eyes = eye_positions()
    size = float(np.ptp(v, axis=0).max())
    parts = [(v, f)] + [sphere(0.025 * size, eye - [0, 0, 0.03 * size], 2) for eye in eyes]
    mouth = template_landmarks()[13]
    parts.append(sphere(0.04 * size, mouth - [0, 0, 0.08 * size], 2))
    return join(*parts)


def unwelded(v, f):
    """Every triangle with its own three vertices (an export that split all edges)."""
    return v[f].reshape(-1, 3), np.arange(3 * len(f)).reshape(-1, 3)


def with_fins(v, f):
    """Extra triangles on existing edges: edges with three faces (non-manifold)."""
    tip = v[f[:40, 0]] + 0.001
    new = np.arange(len(v), len(v) + 40)
    return np.concatenate([v, tip]), np.concatenate([f, np.stack([f[:40, 0], f[:40, 1], new], axis=1)])


def variants():
    return {"centimetres": lambda v, f: (v * 100.0, f),
            "millimetres and moved": lambda v, f: (v * 1000.0 + [50.0, -1700.0, 20.0], f),
            "eyes and mouth interior": with_interiors,
            "joined with a hat": lambda v, f: join((v, f), sphere(0.1 * np.ptp(v[:, 1]),
                                                                v.mean(axis=0) + [0, 0.6 * np.ptp(v[:, 1]), 0], 2)),
            "duplicate vertices": unwelded,
            "non-manifold fins": with_fins}


@pytest.mark.parametrize("name", list(variants()))
def test_artist_mesh_variants_load_with_the_right_inside_and_landmarks_on_the_face(name):
    v0, f0 = base()
    v, f = variants()[name](v0, f0)
    # Where the built-in head's landmarks go under the variant's change of units and place.
    scale = float(np.ptp(v, axis=0).max() / np.ptp(v0, axis=0).max()) if "hat" not in name else 1.0
    offset = v[: len(v0)].mean(axis=0) - v0.mean(axis=0) * scale if name != "duplicate vertices" else 0.0
    expected = template_landmarks() * scale + offset
    keypoints = {key: expected[index] for key, index in KEYPOINTS.items()}
    prior = load_prior(MeshArrays(v, f), keypoints=keypoints, detect_landmarks=False, sdf_resolution=16)
    got = prior.transform.to_canonical(prior.landmark_points())
    head_size = float(np.ptp(v0, axis=0).max()) * scale
    error = np.linalg.norm(got - expected, axis=1) / head_size
    assert prior.landmarks.found.all() and np.median(error) < 0.002 and error.max() < 0.02, (
        np.median(error), error.max(), int(error.argmax()))
    # The head's middle is inside the prior, a point beyond the head is outside.
    centre = prior.transform.to_normalised(v0.mean(axis=0) * scale + offset)
    inside, outside = prior.signed_distance(torch.tensor(np.array([centre, [0.0, 0.0, 0.95]]), dtype=torch.float32))
    assert inside < 0 < outside


def test_an_obj_with_quads_and_ngons_loads_triangulated(tmp_path):
    # A closed head-sized ball as artists model one: quads between rings of latitude, each pole cap a
    # single 24-sided n-gon. trimesh triangulates polygons on load; the prior must be closed and inside.
    rings, segments, radius = 12, 24, 0.12
    lines, index = [], {}
    for r in range(1, rings):
        theta = np.pi * r / rings
        for s_ in range(segments):
            phi = 2 * np.pi * s_ / segments
            index[r, s_] = len(index) + 1
            lines.append(f"v {radius * np.sin(theta) * np.cos(phi)} {radius * np.cos(theta)} "
                         f"{radius * np.sin(theta) * np.sin(phi)}")
    for r in range(1, rings - 1):
        for s_ in range(segments):
            t = (s_ + 1) % segments
            lines.append(f"f {index[r, s_]} {index[r + 1, s_]} {index[r + 1, t]} {index[r, t]}")
    lines.append("f " + " ".join(str(index[1, s_]) for s_ in reversed(range(segments))))
    lines.append("f " + " ".join(str(index[rings - 1, s_]) for s_ in range(segments)))
    path = tmp_path / "quads_and_ngons.obj"
    path.write_text("\n".join(lines) + "\n")
    prior = load_prior(path, detect_landmarks=False, sdf_resolution=16)
    quads = (rings - 2) * segments
    assert prior.faces.shape[1] == 3 and len(prior.faces) == 2 * quads + 2 * (segments - 2)
    inside, outside = prior.signed_distance(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.9]]))
    assert inside < 0 < outside


def test_an_open_neck_is_inside_by_winding_number():
    v, f = base()
    below = v[f].mean(axis=1)[:, 1] < np.quantile(v[:, 1], 0.08)  # cut the lowest faces away: a wide opening
    prior = load_prior(MeshArrays(v, f[~below]), detect_landmarks=False, sdf_resolution=32)
    centre = prior.transform.to_normalised(v.mean(axis=0))
    assert prior.signed_distance(torch.tensor(centre[None], dtype=torch.float32)) < 0


def test_a_mesh_over_the_size_limit_gets_a_sentence():
    v = np.random.default_rng(0).random((1000, 3))
    f = np.random.default_rng(1).integers(0, 1000, (MAX_FACES + 1, 3))
    with pytest.raises(InputError, match="more than the 2,000,000 allowed; decimate it"):
        clean_mesh(MeshArrays(v, f))
