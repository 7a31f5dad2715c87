"""The prior's canonical frame (the file's own coordinates) and the engine's normalised frame.

Normalised = rotation @ (canonical - center) * scale: the mesh's bounding-box centre goes to the origin
and the farthest vertex to radius `NORMALISED_RADIUS` (HeadSculpt fits the prior into a sphere of about
0.7). The rotation is the identity unless the head does not face +Z with +Y up in its file: then the
orientation search (`orientation.py`) finds the axis-aligned turn that makes it face the engine's way.
Results go back with `to_canonical`, exactly the inverse, so they come back in the file's own frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NORMALISED_RADIUS = 0.7


@dataclass(frozen=True)
class PriorTransform:
    """normalised = rotation @ (canonical - center) * scale."""

    center: np.ndarray  # (3,) float64, canonical units
    scale: float
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # (3, 3) proper rotation, file -> engine axes

    @classmethod
    def fit(cls, vertices: np.ndarray, radius: float = NORMALISED_RADIUS) -> "PriorTransform":
        v = np.asarray(vertices, dtype=np.float64)
        center = 0.5 * (v.min(axis=0) + v.max(axis=0))
        extent = float(np.linalg.norm(v - center, axis=1).max())
        if extent <= 0.0:
            from ..errors import InputError

            raise InputError("The prior mesh has no extent (all vertices coincide); select a real head mesh.")
        return cls(center=center, scale=radius / extent)

    def rotated(self, rotation: np.ndarray) -> "PriorTransform":
        """The same transform followed by `rotation` (about the normalised origin)."""
        return PriorTransform(center=self.center, scale=self.scale,
                              rotation=np.asarray(rotation, dtype=np.float64) @ self.rotation)

    @property
    def is_rotated(self) -> bool:
        return not np.allclose(self.rotation, np.eye(3))

    def to_normalised(self, points):
        """Canonical -> normalised; numpy arrays or torch tensors of shape (..., 3)."""
        shifted = (points - self._like(self.center, points)) * self.scale
        return shifted @ self._like(self.rotation, points).T if self.is_rotated else shifted

    def to_canonical(self, points):
        """Normalised -> canonical; numpy arrays or torch tensors of shape (..., 3)."""
        if self.is_rotated:
            points = points @ self._like(self.rotation, points)
        return points / self.scale + self._like(self.center, points)

    def as_dict(self) -> dict:
        return {"center": [float(c) for c in self.center], "scale": float(self.scale),
                "rotation": [[float(x) for x in row] for row in self.rotation]}

    @classmethod
    def from_dict(cls, data: dict) -> "PriorTransform":
        # Priors saved before the orientation search have no rotation: the identity.
        rotation = np.asarray(data.get("rotation", np.eye(3)), dtype=np.float64)
        return cls(center=np.asarray(data["center"], dtype=np.float64), scale=float(data["scale"]), rotation=rotation)

    @staticmethod
    def _like(value: np.ndarray, reference):
        if isinstance(reference, np.ndarray):
            return value.astype(np.result_type(reference.dtype, np.float32), copy=False)
        import torch

        return torch.as_tensor(value, dtype=reference.dtype, device=reference.device)
