"""A sphere standing in for `HeadPrior` in NeRF tests: exact signed distance, the density of Eq. 3,
and empty landmark maps. Test-only; the real prior lives in headsculpt_engine.prior."""
from __future__ import annotations

import torch


class SpherePrior:
    def __init__(self, radius: float = 0.6, sharpness: float = 0.005):
        self.radius = radius
        self.a = sharpness

    def signed_distance(self, points: torch.Tensor) -> torch.Tensor:
        return points.norm(dim=-1) - self.radius

    def density(self, points: torch.Tensor) -> torch.Tensor:
        # sigma_bar = max(0, softplus^-1(tau)), tau = sigmoid(-d / a) / a, softplus^-1(y) = y + log(-expm1(-y)).
        tau = torch.sigmoid(-self.signed_distance(points) / self.a) / self.a
        return (tau + torch.log(-torch.expm1(-tau))).clamp_min(0.0)

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
