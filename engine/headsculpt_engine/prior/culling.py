"""Back faces a camera cannot see, dropped before the prior's shaded renders are rasterised.

Artists' meshes wind their faces either way (the built-in head winds inwards), so "back" is decided
per connected part: where every edge is shared by at most two faces that wind it in opposite
directions (a consistently oriented surface), the sign of the part's volume says which side is out.
On a closed, consistently oriented part a face turned away from the camera is always behind a face
turned towards it, so dropping it changes nothing in the render; through an opening (an open neck)
the inner side of the far wall disappears instead of showing. Meshes with inconsistent winding or
edges shared by more than two faces, and flat parts with no clear inside, keep all their faces.
"""
from __future__ import annotations

import numpy as np

# A part whose |volume| is below this share of a sphere's with the same area has no clear inside.
MIN_VOLUME_SHARE = 0.05
SPHERE_VOLUME_PER_AREA_POWER = 1.0 / (6.0 * np.sqrt(np.pi))  # V = A^1.5 / (6 sqrt(pi)) for a sphere


def consistently_wound(faces: np.ndarray, n_vertices: int) -> bool:
    """True when no directed edge occurs twice (each edge has at most two faces, winding it oppositely)."""
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2).astype(np.int64)
    codes = directed[:, 0] * n_vertices + directed[:, 1]
    return len(np.unique(codes)) == len(codes)


def outward_sign(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per face +1 where its winding's normal points out of its part, -1 where in, 0 where unknown."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(vertices)
    if not consistently_wound(faces, n):
        return np.zeros(len(faces))
    edges = faces[:, [0, 1, 1, 2]].reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    part = label[faces[:, 0]]
    corners = vertices[faces]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    # Volume about each part's own centre, so that an opening (an open neck) barely moves it.
    centre = np.stack([np.bincount(part, corners[:, 0, k], count) for k in range(3)], axis=1)
    centre /= np.bincount(part, minlength=count).clip(1)[:, None]
    volume = np.bincount(part, ((corners[:, 0] - centre[part]) * cross).sum(axis=1) / 6.0, count)
    area = np.bincount(part, np.linalg.norm(cross, axis=1) / 2.0, count)
    clear = np.abs(volume) >= MIN_VOLUME_SHARE * SPHERE_VOLUME_PER_AREA_POWER * area ** 1.5
    return np.where(clear, np.sign(volume), 0.0)[part]


def facing_faces(vertices: np.ndarray, faces: np.ndarray, eyes: np.ndarray) -> np.ndarray:
    """(K, M) bool: per camera position in `eyes` (K, 3), the faces that turn towards it or whose
    outside is unknown."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    corners = v[f]
    outward = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]) * outward_sign(v, f)[:, None]
    facing = np.einsum("fd,kfd->kf", outward, eyes[:, None, :] - corners.mean(axis=1)[None])
    return (facing > 0) | ~outward.any(axis=1)[None]
