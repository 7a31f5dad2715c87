"""The prior's canonical frame (the file's own coordinates) and the engine's normalised frame.

Normalised = (canonical - center) * scale: the mesh's bounding-box centre goes to the origin and the
farthest vertex to radius `NORMALISED_RADIUS` (HeadSculpt fits the prior into a sphere of about 0.7).
Results go back with `to_canonical`, exactly the inverse.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NORMALISED_RADIUS = 0.7


@dataclass(frozen=True)
class PriorTransform:
    """normalised = (canonical - center) * scale."""

    center: np.ndarray  # (3,) float64, canonical units
    scale: float

    @classmethod
    def fit(cls, vertices: np.ndarray, radius: float = NORMALISED_RADIUS) -> "PriorTransform":
        v = np.asarray(vertices, dtype=np.float64)
        center = 0.5 * (v.min(axis=0) + v.max(axis=0))
        extent = float(np.linalg.norm(v - center, axis=1).max())
        if extent <= 0.0:
            from ..errors import InputError

            raise InputError("The prior mesh has no extent (all vertices coincide); select a real head mesh.")
        return cls(center=center, scale=radius / extent)

    def to_normalised(self, points):
        """Canonical -> normalised; numpy arrays or torch tensors of shape (..., 3)."""
        return (points - self._like(self.center, points)) * self.scale

    def to_canonical(self, points):
        """Normalised -> canonical; numpy arrays or torch tensors of shape (..., 3)."""
        return points / self.scale + self._like(self.center, points)

    def as_dict(self) -> dict:
        return {"center": [float(c) for c in self.center], "scale": float(self.scale)}

    @classmethod
    def from_dict(cls, data: dict) -> "PriorTransform":
        return cls(center=np.asarray(data["center"], dtype=np.float64), scale=float(data["scale"]))

    @staticmethod
    def _like(value: np.ndarray, reference):
        if isinstance(reference, np.ndarray):
            return value.astype(np.result_type(reference.dtype, np.float32), copy=False)
        import torch

        return torch.as_tensor(value, dtype=reference.dtype, device=reference.device)
