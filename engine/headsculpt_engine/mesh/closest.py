"""The closest point of a triangle mesh to each query point, as (triangle, barycentrics, distance):
what the rig transfer and the guided landmarks both need to attach points to a surface."""
from __future__ import annotations

import numpy as np


def closest_on_surface(points: np.ndarray, vertices: np.ndarray,
                       faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per point: the triangle of the closest surface point, its barycentrics, and the distance (libigl)."""
    import igl

    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    squared, face, closest = igl.point_mesh_squared_distance(np.asarray(points, dtype=np.float64), v, f)
    corners = f[face]
    bary = igl.barycentric_coordinates(closest, v[corners[:, 0]], v[corners[:, 1]], v[corners[:, 2]])
    bary = np.clip(np.nan_to_num(bary), 0.0, 1.0)
    bary /= bary.sum(axis=1, keepdims=True).clip(1e-12)
    return np.asarray(face, dtype=np.int64), bary, np.sqrt(np.maximum(squared, 0.0))
