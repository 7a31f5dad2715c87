"""UV unwrapping (xatlas, with a fallback) and albedo baking into a texture with filled gutters.

xatlas runs in a child process: the xatlas 0.0.11 wheel segfaults on some meshes (regular
icospheres of 80k+ triangles here) and its run time varies widely (20 s to minutes for 200k
triangles), and neither may take the engine down or stall a job. When it crashes or runs past its
time limit, `box_unwrap` gives a simpler atlas: charts are connected faces sharing a dominant normal
axis, projected along that axis (no flips, bounded stretch) and shelf-packed.
"""
from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import HeadSculptError

# xatlas grows charts until this share of the surface area (or its normal-deviation cost) stops
# them. Its default (no limit, several growth iterations) takes 60-150 s for the 75k-200k triangle
# meshes of a fine run on a 2-core CPU; bounded charts and one pass bring that to seconds.
_CHART_AREA_SHARE = 1.0 / 256.0
_CHART_MAX_COST = 2.0
_CHART_NORMAL_WEIGHT = 0.5


@dataclass
class UnwrappedMesh:
    """A mesh whose vertices are split along UV seams: `source` maps each back to the input vertex."""

    vertices: np.ndarray  # (V', 3) float32
    faces: np.ndarray  # (F, 3) int64
    uvs: np.ndarray  # (V', 2) float32 in [0, 1], v up (OBJ convention)
    source: np.ndarray  # (V',) int64 index into the input vertices
    method: str = "xatlas"  # "xatlas" or "box" (the fallback)


log = logging.getLogger(__name__)


def unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int = 2,
           timeout_s: float = 120.0) -> UnwrappedMesh:
    """xatlas charts and packing for a texture of `texture_size` texels, in a child process; the box
    unwrap when xatlas crashes or takes longer than `timeout_s`."""
    if multiprocessing.current_process().daemon:  # a daemonic process may not start children
        return xatlas_unwrap(vertices, faces, texture_size, padding)
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_xatlas_child, args=(sender, vertices, faces, texture_size, padding), daemon=True)
    child.start()
    sender.close()
    try:
        if receiver.poll(timeout_s):
            return receiver.recv()
        reason = f"took longer than {timeout_s:.0f} s"
    except EOFError:  # the child died without answering
        child.join(5)
        reason = f"crashed (exit code {child.exitcode})"
    finally:
        receiver.close()
        if child.is_alive():
            child.terminate()
        child.join(5)
    log.warning("xatlas %s on a %d-triangle mesh; using the box-projection unwrap", reason, len(faces))
    return box_unwrap(vertices, faces, texture_size, padding)


def _xatlas_child(sender, vertices, faces, texture_size, padding) -> None:
    sender.send(xatlas_unwrap(vertices, faces, texture_size, padding))
    sender.close()


def xatlas_unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int = 2) -> UnwrappedMesh:
    """xatlas charts and packing, in this process."""
    import xatlas

    v = np.ascontiguousarray(vertices, dtype=np.float32)
    f = np.ascontiguousarray(faces, dtype=np.uint32)
    tri = v[f].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    atlas = xatlas.Atlas()
    atlas.add_mesh(v, f)
    charts = xatlas.ChartOptions()
    charts.max_iterations = 0
    charts.max_chart_area = float(area * _CHART_AREA_SHARE)
    charts.max_cost = _CHART_MAX_COST
    charts.normal_deviation_weight = _CHART_NORMAL_WEIGHT
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(charts, pack)
    source, indices, uvs = atlas[0]
    # xatlas puts v = 0 at the image's top row; flip to the OBJ/trimesh convention (v up).
    uvs = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1).astype(np.float32)
    source = source.astype(np.int64)
    return UnwrappedMesh(vertices=v[source], faces=indices.astype(np.int64), uvs=uvs, source=source)


def box_unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int = 2) -> UnwrappedMesh:
    """Charts of edge-connected faces with the same dominant normal axis (of six), each projected
    along that axis, packed on shelves by height; uniform texel density."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    n_faces, n_verts = len(f), len(v)
    tri = v[f]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    axis = np.abs(normal).argmax(axis=1)
    positive = np.take_along_axis(normal, axis[:, None], axis=1)[:, 0] >= 0
    label = axis * 2 + positive
    # Faces sharing an edge and a label are joined into one chart.
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(n_faces), 3)
    order = np.argsort(edges[:, 0] * n_verts + edges[:, 1], kind="stable")
    key = (edges[:, 0] * n_verts + edges[:, 1])[order]
    pair = key[1:] == key[:-1]
    fa, fb = owner[order][:-1][pair], owner[order][1:][pair]
    join = label[fa] == label[fb]
    graph = coo_matrix((np.ones(int(join.sum())), (fa[join], fb[join])), shape=(n_faces, n_faces))
    _, chart = connected_components(graph, directed=False)
    # One output vertex per (chart, input vertex).
    corner_key = (chart[:, None] * n_verts + f).reshape(-1)
    unique_keys, corner_vertex = np.unique(corner_key, return_inverse=True)
    source = unique_keys % n_verts
    vert_chart = unique_keys // n_verts
    chart_label = np.zeros(chart.max() + 1, dtype=np.int64)
    chart_label[chart] = label
    a = chart_label[vert_chart] // 2
    sign = np.where(chart_label[vert_chart] % 2 == 1, 1.0, -1.0)
    p = v[source]
    rows = np.arange(len(p))
    # (u, v) axes chosen so that faces facing along +axis keep their winding.
    flat = np.stack([p[rows, (a + 1) % 3] * sign, p[rows, (a + 2) % 3]], axis=1)
    uvs = _shelf_pack(flat, vert_chart, texture_size, padding)
    return UnwrappedMesh(vertices=p.astype(np.float32), faces=corner_vertex.reshape(-1, 3).astype(np.int64),
                         uvs=uvs, source=source.astype(np.int64), method="box")


def _shelf_pack(flat: np.ndarray, chart: np.ndarray, texture_size: int, padding: int) -> np.ndarray:
    """Place every chart's bounding box on shelves in the unit square; returns uvs (v up)."""
    n = chart.max() + 1
    lo = np.full((n, 2), np.inf)
    hi = np.full((n, 2), -np.inf)
    np.minimum.at(lo, chart, flat)
    np.maximum.at(hi, chart, flat)
    size = hi - lo
    order = np.argsort(-size[:, 1], kind="stable")
    pad = (padding + 1.0) / texture_size
    scale = np.sqrt(0.6 / max(float((size[:, 0] * size[:, 1]).sum()), 1e-12))
    for _ in range(200):
        boxes = size * scale + 2 * pad
        offset = np.zeros((n, 2))
        x = y = shelf = 0.0
        for c in order:
            w, h = boxes[c]
            if x + w > 1.0 and x > 0:
                x, y, shelf = 0.0, y + shelf, 0.0
            offset[c] = (x + pad, y + pad)
            x += w
            shelf = max(shelf, h)
        if y + shelf <= 1.0 and boxes[:, 0].max() <= 1.0:
            break
        scale *= 0.9
    else:
        raise HeadSculptError(f"The mesh falls into {n} separate UV charts, too many to pack into a "
                              f"{texture_size}x{texture_size} texture; raise export.texture_size.")
    uv = (flat - lo[chart]) * scale + offset[chart]
    return np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1).astype(np.float32)


def bake_texture(mesh: UnwrappedMesh, colour_fn: Callable[["object"], "object"], size: int) -> np.ndarray:
    """(size, size, 3) uint8 albedo: the colour field at the surface point under every texel centre,
    gutters filled with the nearest baked texel so that bilinear lookups and mipmaps show no seams."""
    import torch

    from .raster import rasterize_uv

    faces = torch.from_numpy(mesh.faces)
    tri, bary = rasterize_uv(torch.from_numpy(mesh.uvs), faces, size)
    covered = tri >= 0
    corners = torch.from_numpy(mesh.vertices)[faces[tri[covered]]]  # (N, 3, 3)
    points = (bary[covered].unsqueeze(-1) * corners).sum(dim=1)
    image = np.zeros((size, size, 3), dtype=np.float32)
    image[covered.numpy()] = colour_fn(points).clamp(0, 1).numpy()
    return fill_gutters(image, covered.numpy())


def fill_gutters(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Give every uncovered texel the colour of its nearest covered texel; returns uint8."""
    from scipy.ndimage import distance_transform_edt

    if covered.any() and not covered.all():
        _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
        image = image[rows, cols]
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
