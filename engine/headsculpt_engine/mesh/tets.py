"""Tetrahedral grids for DMTet: cube cells split into six tetrahedra around the main diagonal.

Every cell of a regular (res)^3 lattice over [-1, 1]^3 is cut into the six tetrahedra of the Kuhn
(Freudenthal) split that share the cell's diagonal from corner (0,0,0) to corner (1,1,1). All cells
use the same split, so neighbouring cells meet face to face and the grid is conforming; vertices are
the shared lattice points (no duplicates). Grids are written to `paths.cache_dir()/tets/` the first
time a resolution is used and memory-mapped afterwards (the 256 grid holds 100M tetrahedra).

DMTet optimises only where the surface can be. `band_grid` keeps the cells whose corners lie within
a band of the initial surface (or all cells with `band_cells=None`), re-indexed to a compact grid.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .. import paths

if TYPE_CHECKING:
    import torch

# The six monotone lattice paths from corner 0 to corner 7 of a cell (corner bits: x=1, y=2, z=4):
# each path adds one axis bit at a time and its four corners form one tetrahedron.
_KUHN_TETS = np.array([[0, 1 << a, (1 << a) | (1 << b), 7] for a, b, _ in itertools.permutations(range(3))],
                      dtype=np.int64)


def _grid_files(resolution: int) -> tuple[Path, Path]:
    folder = paths.cache_dir() / "tets"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"grid{resolution}_vertices.npy", folder / f"grid{resolution}_tets.npy"


def _write_grid(resolution: int, vert_file: Path, tet_file: Path) -> None:
    """Write the grid's .npy files, one x-slab of cells at a time (the 256 grid's tets take 1.6 GB)."""
    r1 = resolution + 1
    axis = np.linspace(-1.0, 1.0, r1, dtype=np.float32)
    # Vertex index = (x * r1 + y) * r1 + z, with x slowest; cells are ordered the same way.
    vx, vy, vz = np.meshgrid(axis, axis, axis, indexing="ij")
    vert_tmp, tet_tmp = vert_file.with_suffix(".tmp.npy"), tet_file.with_suffix(".tmp.npy")
    np.save(vert_tmp, np.stack([vx, vy, vz], axis=-1).reshape(-1, 3))
    del vx, vy, vz
    corner_offsets = np.array([((c & 1) * r1 + ((c >> 1) & 1)) * r1 + ((c >> 2) & 1) for c in range(8)],
                              dtype=np.int64)
    slab_tets = corner_offsets[_KUHN_TETS][None]  # (1, 6, 4)
    cy, cz = np.meshgrid(np.arange(resolution, dtype=np.int64), np.arange(resolution, dtype=np.int64), indexing="ij")
    slab_base = (cy * r1 + cz).reshape(-1)
    per_slab = 6 * resolution * resolution
    tets = np.lib.format.open_memmap(tet_tmp, mode="w+", dtype=np.int32, shape=(per_slab * resolution, 4))
    for x in range(resolution):
        base = slab_base + x * r1 * r1
        tets[x * per_slab:(x + 1) * per_slab] = (base[:, None, None] + slab_tets).reshape(-1, 4)
    tets.flush()
    del tets
    vert_tmp.replace(vert_file)
    tet_tmp.replace(tet_file)


def tet_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The full grid: vertices (N, 3) float32 in [-1, 1]^3 and tets (6 res^3, 4) int32, six per cell
    in cell order. Loaded memory-mapped from the cache (built and written on first use)."""
    if resolution < 1:
        raise ValueError("tet grid resolution must be positive")
    vert_file, tet_file = _grid_files(resolution)
    if not (vert_file.exists() and tet_file.exists()):
        _write_grid(resolution, vert_file, tet_file)
    return np.load(vert_file, mmap_mode="r"), np.load(tet_file, mmap_mode="r")


@dataclass
class TetGrid:
    """A (sub)grid ready for DMTet: base positions in the engine frame and its tetrahedra."""

    vertices: "torch.Tensor"  # (N, 3) float32
    tets: "torch.Tensor"  # (T, 4) int64
    cell_size: float  # edge length of one grid cell in the engine frame
    resolution: int


def occupied_extent(sdf_fn: Callable[["torch.Tensor"], "torch.Tensor"], bound: float = 1.0,
                    resolution: int = 64, chunk: int = 1 << 18, device=None) -> float:
    """max |coordinate| over the points of a resolution^3 lattice on [-bound, bound]^3 where `sdf_fn`
    is negative (inside): the half-size of the centred cube the shape occupies, to within one lattice
    cell. 0 when nothing is inside."""
    import torch

    axis = torch.linspace(-bound, bound, resolution + 1)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    points = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    extent = 0.0
    with torch.no_grad():
        for i in range(0, points.shape[0], chunk):
            part = points[i:i + chunk]
            inside = sdf_fn(part.to(device)).reshape(-1).cpu() < 0
            if bool(inside.any()):
                extent = max(extent, float(part[inside].abs().max()))
    return extent


def band_grid(resolution: int, sdf_fn: Callable[["torch.Tensor"], "torch.Tensor"], bound: float = 1.0,
              band_cells: float | None = 3.0, device=None, chunk: int = 1 << 18) -> tuple[TetGrid, "torch.Tensor"]:
    """The grid scaled to [-bound, bound]^3, restricted to cells with a corner within `band_cells`
    cells of the surface (of a lattice vertex beside a sign change of `sdf_fn`), or all cells when
    None. Returns the grid and `sdf_fn` at its vertices."""
    import torch

    vertices_np, tets_np = tet_grid(resolution)
    cell = 2.0 * bound / resolution
    all_vertices = torch.from_numpy(np.array(vertices_np)) * bound
    with torch.no_grad():
        sdf = torch.cat([sdf_fn(all_vertices[i:i + chunk].to(device)).float().cpu()
                         for i in range(0, all_vertices.shape[0], chunk)])
    if band_cells is None:
        tets = torch.from_numpy(np.array(tets_np)).long()
    else:
        # Distance (in cells) from each lattice vertex to the nearest vertex beside a sign change; this
        # does not trust the SDF's magnitude, which a density-derived estimate only roughly has.
        from scipy.ndimage import distance_transform_edt

        r1 = resolution + 1
        inside = (sdf < 0).view(r1, r1, r1).numpy()
        boundary = np.zeros_like(inside)
        for axis in range(3):
            change = np.diff(inside, axis=axis)
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(0, -1), slice(1, None)
            boundary[tuple(lo)] |= change
            boundary[tuple(hi)] |= change
        near = torch.from_numpy(distance_transform_edt(~boundary) <= band_cells) if boundary.any() \
            else torch.zeros(r1, r1, r1, dtype=torch.bool)
        # A cell (corner 0 at lattice x, y, z < res) is kept when any of its eight corners is near.
        cells = near[:-1, :-1, :-1].clone()
        for dx, dy, dz in itertools.product((0, 1), repeat=3):
            cells |= near[dx:dx + resolution, dy:dy + resolution, dz:dz + resolution]
        cell_ids = torch.nonzero(cells.reshape(-1)).squeeze(1)
        rows = (cell_ids[:, None] * 6 + torch.arange(6)).reshape(-1).numpy()
        tets = torch.from_numpy(np.asarray(tets_np[rows])).long()
    used, inverse = torch.unique(tets.reshape(-1), return_inverse=True)
    grid = TetGrid(vertices=all_vertices[used].to(device), tets=inverse.view(-1, 4).to(device),
                   cell_size=cell, resolution=resolution)
    return grid, sdf[used].to(device)
