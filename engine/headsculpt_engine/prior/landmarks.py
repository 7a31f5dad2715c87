"""MediaPipe FaceMesh landmarks embedded on the prior's surface as (triangle, barycentric) pairs.

An embedding survives normalisation and follows the surface, so one computed on the prior gives the
3D landmarks in any frame. It comes from detection on renders (`detect.py`) or from a vertex index
file (a prior vertex per MediaPipe landmark, e.g. a FLAME -> MediaPipe mapping).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

NUM_LANDMARKS = 478  # FaceMesh with refine_landmarks: 468 face points + 2 x 5 iris points
NUM_FACE_LANDMARKS = 468
NOSE_TIP = 1
# Iris centres, named like mediapipe's FACEMESH_RIGHT_IRIS (469-472) / FACEMESH_LEFT_IRIS (474-477) sets.
RIGHT_IRIS_CENTER = 468
LEFT_IRIS_CENTER = 473


@dataclass
class LandmarkEmbedding:
    """Per landmark: a triangle of the prior (-1 = missing), barycentrics, confidence in [0, 1]."""

    face_index: np.ndarray  # (478,) int64
    barycentric: np.ndarray  # (478, 3) float32
    confidence: np.ndarray  # (478,) float32, 0 where missing

    @property
    def found(self) -> np.ndarray:
        return self.face_index >= 0

    def points(self, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """(478, 3) positions on the mesh `vertices`/`faces`; NaN rows for missing landmarks."""
        out = np.full((len(self.face_index), 3), np.nan, dtype=np.float64)
        ok = self.found
        corners = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)[self.face_index[ok]]]  # (K, 3, 3)
        out[ok] = np.einsum("kc,kcd->kd", self.barycentric[ok].astype(np.float64), corners)
        return out

    def save(self, path: Path) -> None:
        np.savez(path, face_index=self.face_index, barycentric=self.barycentric, confidence=self.confidence)

    @classmethod
    def load(cls, path: Path) -> "LandmarkEmbedding":
        with np.load(path, allow_pickle=False) as data:
            return cls(face_index=data["face_index"].astype(np.int64),
                       barycentric=data["barycentric"].astype(np.float32),
                       confidence=data["confidence"].astype(np.float32))


def embedding_from_vertex_indices(indices: np.ndarray, faces: np.ndarray, num_vertices: int) -> LandmarkEmbedding:
    """An embedding that puts landmark i on vertex indices[i] (negative = missing), confidence 1."""
    indices = np.asarray(indices)
    if indices.ndim != 1 or len(indices) not in (NUM_FACE_LANDMARKS, NUM_LANDMARKS) \
            or not np.issubdtype(indices.dtype, np.integer):
        raise InputError(f"A landmark file must hold {NUM_LANDMARKS} integer vertex indices (one per MediaPipe "
                         f"landmark; {NUM_FACE_LANDMARKS} without the irises), not an array of shape "
                         f"{indices.shape} and type {indices.dtype}.")
    if indices.max() >= num_vertices:
        raise InputError(f"The landmark file names vertex {int(indices.max())}, but the prior has only {num_vertices} "
                         "vertices; use a landmark file made for this mesh's topology.")
    indices = np.concatenate([indices, np.full(NUM_LANDMARKS - len(indices), -1)]).astype(np.int64)
    faces = np.asarray(faces)
    # One face per vertex: the first face that uses it, and the corner the vertex occupies there.
    owner_face = np.full(num_vertices, -1, dtype=np.int64)
    owner_corner = np.zeros(num_vertices, dtype=np.int64)
    for corner in (2, 1, 0):
        order = np.arange(len(faces))[::-1]
        owner_face[faces[order, corner]] = order
        owner_corner[faces[order, corner]] = corner
    valid = indices >= 0
    face_index = np.full(NUM_LANDMARKS, -1, dtype=np.int64)
    face_index[valid] = owner_face[indices[valid]]
    if np.any(valid & (face_index < 0)):
        raise InputError("The landmark file names vertices that no face of the prior uses; use a landmark file "
                         "made for this mesh.")
    barycentric = np.zeros((NUM_LANDMARKS, 3), dtype=np.float32)
    barycentric[np.flatnonzero(valid), owner_corner[indices[valid]]] = 1.0
    confidence = np.where(valid, 1.0, 0.0).astype(np.float32)
    return LandmarkEmbedding(face_index=face_index, barycentric=barycentric, confidence=confidence)


def read_landmark_file(path: str | Path) -> np.ndarray:
    """The vertex indices of a `.npy` landmark file (never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The landmark file {path} does not exist; give a .npy file of {NUM_LANDMARKS} vertex indices.")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"Could not read the landmark file {path.name} ({error}); it must be a .npy array of "
                         f"{NUM_LANDMARKS} integer vertex indices.") from error
