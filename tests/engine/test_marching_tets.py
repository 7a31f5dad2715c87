"""Tet grid and marching tetrahedra against an analytic sphere."""
from __future__ import annotations

import math

import numpy as np
import torch

from headsculpt_engine import paths
from headsculpt_engine.mesh.marching import marching_tets
from headsculpt_engine.mesh.tets import band_grid, tet_grid


def sphere_sdf(radius: float, centre=(0.0, 0.0, 0.0)):
    c = torch.tensor(centre)
    return lambda p: (p - c).norm(dim=-1) - radius


def edge_face_counts(faces: torch.Tensor) -> torch.Tensor:
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = torch.sort(edges, dim=1).values
    _, counts = torch.unique(edges, dim=0, return_counts=True)
    return counts


def area(vertices: torch.Tensor, faces: torch.Tensor) -> float:
    v = vertices[faces]
    return float(0.5 * torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1).norm(dim=-1).sum())


def test_grid_is_conforming_and_cached():
    verts, tets = tet_grid(4)
    assert verts.shape == (125, 3) and tets.shape == (6 * 64, 4)
    assert (paths.cache_dir() / "tets" / "grid4_tets.npy").exists()
    v = np.asarray(verts, dtype=np.float64)
    t = np.asarray(tets)
    # Volumes are positive-or-negative but never zero and fill the cube [-1, 1]^3 exactly.
    d = v[t[:, 1:]] - v[t[:, :1]]
    vol = np.abs(np.linalg.det(d)) / 6.0
    assert vol.min() > 0 and math.isclose(vol.sum(), 8.0, rel_tol=1e-9)
    # Conforming: every interior triangle is shared by exactly two tets, boundary ones by one,
    # and the boundary triangles cover the cube's 6 faces (2 per boundary square).
    tri = np.sort(np.concatenate([t[:, [0, 1, 2]], t[:, [0, 1, 3]], t[:, [0, 2, 3]], t[:, [1, 2, 3]]]), axis=1)
    _, counts = np.unique(tri, axis=0, return_counts=True)
    assert set(counts.tolist()) == {1, 2}
    assert int((counts == 1).sum()) == 6 * 16 * 2
    # A second call reads the cached file (memory-mapped).
    again = tet_grid(4)[1]
    assert isinstance(again, np.memmap) and np.array_equal(np.asarray(again), t)


def test_sphere_at_grid_128_is_closed_manifold_with_right_area():
    radius = 0.55
    grid, sdf = band_grid(128, sphere_sdf(radius, (0.013, -0.021, 0.007)), band_cells=2.0)
    vertices, faces = marching_tets(grid.vertices, sdf, grid.tets)
    counts = edge_face_counts(faces)
    assert counts.numel() > 10000
    assert bool((counts == 2).all())
    expected = 4.0 * math.pi * radius ** 2
    assert abs(area(vertices, faces) - expected) / expected < 0.02
    # Outward orientation: the signed volume is the sphere's (positive), not its negative.
    v = vertices[faces]
    volume = float((v[:, 0] * torch.cross(v[:, 1], v[:, 2], dim=-1)).sum() / 6.0)
    assert abs(volume - 4.0 / 3.0 * math.pi * radius ** 3) / volume < 0.02


def test_band_matches_full_grid_and_gradients_flow():
    fn = sphere_sdf(0.4)
    full, sdf_full = band_grid(16, fn, band_cells=None)
    band, sdf_band = band_grid(16, fn, band_cells=1.5)
    assert band.tets.shape[0] < full.tets.shape[0]
    vf, ff = marching_tets(full.vertices, sdf_full, full.tets)
    vb, fb = marching_tets(band.vertices, sdf_band, band.tets)
    assert ff.shape == fb.shape and math.isclose(area(vf, ff), area(vb, fb), rel_tol=1e-5)
    # Lowering the SDF everywhere grows the surface: d(area)/d(sdf) < 0 on the active vertices.
    sdf = sdf_band.clone().requires_grad_(True)
    pos = band.vertices.clone().requires_grad_(True)
    verts, faces = marching_tets(pos, sdf, band.tets)
    v = verts[faces]
    a = 0.5 * torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1).norm(dim=-1).sum()
    a.backward()
    assert float(sdf.grad.sum()) < 0
    assert float(pos.grad.abs().sum()) > 0


def test_empty_when_no_sign_change():
    grid, sdf = band_grid(8, lambda p: p.norm(dim=-1) + 1.0, band_cells=None)
    verts, faces = marching_tets(grid.vertices, sdf, grid.tets)
    assert verts.shape == (0, 3) and faces.shape == (0, 3)


def test_band_does_not_depend_on_the_sdf_scale():
    # A density-derived SDF is only roughly a distance: the band is found from sign changes alone.
    fn = sphere_sdf(0.4)
    unit, _ = band_grid(20, fn, band_cells=2.0)
    scaled, _ = band_grid(20, lambda p: 1000.0 * fn(p), band_cells=2.0)
    assert torch.equal(unit.tets, scaled.tets) and torch.equal(unit.vertices, scaled.vertices)
