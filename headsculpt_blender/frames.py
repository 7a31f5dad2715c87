"""Coordinate frames between Blender and the engine (numpy only, no bpy).

Blender is +Z up and a character faces -Y; the engine's canonical frame (FLAME's) is +Y up with the face
along +Z. The two are related by a rotation of -90 degrees about X:

    engine (x, y, z) = (x_b, z_b, -y_b)        blender (x, y, z) = (x_e, -z_e, y_e)

What is sent is the prior's mesh oriented as it stands in the scene: its local coordinates through the
linear (rotation and scale) part of its world matrix, without the translation. A FLAME head imported
the way Blender imports OBJ files (object rotated +90 degrees about X, mesh data still Y up) and one
whose rotation was applied to the data therefore reach the engine the same way, upright. Leaving the
translation out keeps the prior's content hash, and thus its engine id, when the object is only moved.
The avatar comes back in that same frame; `engine_to_local` maps it into the prior's local coordinates,
so the avatar gets the prior's world matrix and sits exactly on it.
"""
from __future__ import annotations

import numpy as np

# Rows map Blender coordinates to engine coordinates: engine = BLENDER_TO_ENGINE @ blender.
BLENDER_TO_ENGINE = np.array([[1.0, 0.0, 0.0],
                              [0.0, 0.0, 1.0],
                              [0.0, -1.0, 0.0]])
ENGINE_TO_BLENDER = BLENDER_TO_ENGINE.T  # a rotation: its inverse is its transpose


def blender_to_engine(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ BLENDER_TO_ENGINE.T


def engine_to_blender(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ ENGINE_TO_BLENDER.T


def linear_part(matrix_world) -> np.ndarray:
    """The 3x3 rotation-and-scale block of a 4x4 world matrix (mathutils.Matrix or array)."""
    return np.array([[matrix_world[r][c] for c in range(3)] for r in range(3)], dtype=np.float64)


def local_to_engine(local: np.ndarray, matrix_world) -> np.ndarray:
    """Prior vertices in object-local coordinates -> engine canonical frame (float32)."""
    oriented = np.asarray(local, dtype=np.float64) @ linear_part(matrix_world).T
    return blender_to_engine(oriented).astype(np.float32)


def engine_to_local(engine_points: np.ndarray, matrix_world) -> np.ndarray:
    """Inverse of `local_to_engine`: engine canonical points -> the prior's local coordinates."""
    linear = linear_part(matrix_world)
    if abs(np.linalg.det(linear)) < 1e-12:
        raise ValueError("the prior's world matrix has zero scale, so the avatar cannot be placed on it")
    oriented = engine_to_blender(engine_points)
    return np.linalg.solve(linear, oriented.T).T.astype(np.float32)
