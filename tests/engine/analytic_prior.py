"""A sphere standing in for `HeadPrior` in NeRF tests: exact signed distance, the density of Eq. 3,
and empty landmark maps. Test-only; the real prior lives in headsculpt_engine.prior."""
from __future__ import annotations

import torch

from headsculpt_engine.prior.density import DEFAULT_SHARPNESS, density_prior


class SpherePrior:
    def __init__(self, radius: float = 0.6):
        self.radius = radius

    def signed_distance(self, points: torch.Tensor) -> torch.Tensor:
        return points.norm(dim=-1) - self.radius

    def density(self, points: torch.Tensor, a: float = DEFAULT_SHARPNESS) -> torch.Tensor:
        return density_prior(self.signed_distance(points), a)

    def landmark_maps(self, cameras, policy: str = "none") -> torch.Tensor:
        return torch.zeros(len(cameras), 3, cameras.height, cameras.width)

    def ray_hits(self, cameras) -> tuple[torch.Tensor, torch.Tensor]:
        """Analytic ray-sphere intersection per pixel: hit mask (B, H, W) and hit points (B, H, W, 3)."""
        origins, dirs = cameras.rays()
        b = (origins * dirs).sum(-1)
        c = (origins * origins).sum(-1) - self.radius ** 2
        disc = b * b - c
        t = -b - disc.clamp_min(0).sqrt()
        return (disc > 0) & (t > 0), origins + t[..., None] * dirs
