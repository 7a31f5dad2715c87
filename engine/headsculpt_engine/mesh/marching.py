"""Differentiable marching tetrahedra (DMTet): a triangle mesh from SDF values on tet-grid vertices.

Surface vertices sit on the grid edges whose ends have opposite signs, at the zero of the linear
interpolation of the SDF, so their positions are differentiable w.r.t. both the SDF values and the
(deformed) grid vertex positions. Each edge gives one shared vertex, so the mesh is watertight where
the surface is closed inside the grid.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# The six edges of a tetrahedron as pairs of its local corners.
TET_EDGES = np.array(list(itertools.combinations(range(4), 2)), dtype=np.int64)


def _triangle_table() -> np.ndarray:
    """For each of the 16 inside/outside patterns (bit i = corner i inside), up to two triangles
    given as local edge indices (-1 = none). Orientation is fixed later from the geometry."""
    edge_of = {tuple(e): k for k, e in enumerate(TET_EDGES.tolist())}

    def edge(a: int, b: int) -> int:
        return edge_of[(min(a, b), max(a, b))]

    table = -np.ones((16, 2, 3), dtype=np.int64)
    for pattern in range(1, 15):
        inside = [c for c in range(4) if pattern >> c & 1]
        outside = [c for c in range(4) if not pattern >> c & 1]
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            table[pattern, 0] = [edge(lone, o) for o in others]
        else:
            (a, b), (c, d) = inside, outside
            # The quad's corners in cyclic order: ac, ad, bd, bc; split along ac-bd.
            table[pattern, 0] = [edge(a, c), edge(a, d), edge(b, d)]
            table[pattern, 1] = [edge(a, c), edge(b, d), edge(b, c)]
    return table


TRIANGLE_TABLE = _triangle_table()


def marching_tets(positions: "torch.Tensor", sdf: "torch.Tensor", tets: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Extract the zero level set (negative = inside).

    positions (N, 3) and sdf (N,) may carry gradients; tets (T, 4) int64. Returns vertices (M, 3)
    and faces (F, 3) int64, faces wound counter-clockwise seen from outside (normals point out).
    """
    import torch

    dev = positions.device
    with torch.no_grad():
        inside = sdf.detach()[tets] < 0  # (T, 4)
        count = inside.sum(dim=1)
        active = (count > 0) & (count < 4)
        act_tets = tets[active]
        act_inside = inside[active]
        if act_tets.shape[0] == 0:
            return positions.new_zeros((0, 3)), torch.zeros((0, 3), dtype=torch.long, device=dev)
        edges_local = torch.as_tensor(TET_EDGES, device=dev)
        ends = act_tets[:, edges_local]  # (Ta, 6, 2) global vertex ids
        crossing = act_inside[:, edges_local[:, 0]] != act_inside[:, edges_local[:, 1]]
        ends = torch.sort(ends, dim=-1).values
        n = positions.shape[0]
        keys = ends[..., 0] * n + ends[..., 1]
        unique_keys, inverse = torch.unique(keys[crossing], return_inverse=True)
        edge_vertex = torch.full(keys.shape, -1, dtype=torch.long, device=dev)
        edge_vertex[crossing] = inverse
        pattern = (act_inside.long() * (2 ** torch.arange(4, device=dev))).sum(dim=1)
        local = torch.as_tensor(TRIANGLE_TABLE, device=dev)[pattern]  # (Ta, 2, 3)
        has = local[..., 0] >= 0
        faces = torch.gather(edge_vertex, 1, local.clamp_min(0).view(-1, 6)).view(-1, 2, 3)[has]
        owner = torch.arange(act_tets.shape[0], device=dev).unsqueeze(1).expand(-1, 2)[has]
        a_ids, b_ids = unique_keys // n, unique_keys % n

    sa, sb = sdf[a_ids].unsqueeze(-1), sdf[b_ids].unsqueeze(-1)
    pa, pb = positions[a_ids], positions[b_ids]
    # Zero of s along the edge: p = (pa * sb - pb * sa) / (sb - sa); the signs differ, so sb - sa != 0.
    vertices = (pa * sb - pb * sa) / (sb - sa)

    with torch.no_grad():
        # Orient every triangle so that its normal points from the inside corners to the outside ones.
        corner_pos = positions.detach()[act_tets[owner]]  # (F, 4, 3)
        w_in = act_inside[owner].float().unsqueeze(-1)
        in_c = (corner_pos * w_in).sum(1) / w_in.sum(1)
        out_c = (corner_pos * (1 - w_in)).sum(1) / (1 - w_in).sum(1)
        v = vertices.detach()[faces]
        normal = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
        flip = (normal * (out_c - in_c)).sum(-1) < 0
        faces = torch.where(flip.unsqueeze(-1), faces[:, [0, 2, 1]], faces)
    return vertices, faces
