"""The coarse-stage radiance field on the head prior (HeadSculpt Sec. 3.1, Eq. 2, appendix A.1).

Hash-grid features (32 = 16 levels x 2) feed an MLP [32, 64, 64, 3+1+3] that predicts a normal, a
density residual h0 and an albedo. The density is a residual on the prior,
sigma(x) = softplus(h0(x) + sigma_bar(x)), with sigma_bar from `prior.density` (Eq. 3), so the
untrained field already is the prior head.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CoarseConfig
from .hashgrid import HashGridSpec, make_hash_grid, resolve_backend


class DensityPrior(Protocol):
    def density(self, points: torch.Tensor, a: float) -> torch.Tensor:
        """sigma_bar(x) of Eq. 3 with sharpness `a` at points (..., 3) in the normalised frame."""


def hash_grid_spec(cfg: CoarseConfig) -> HashGridSpec:
    return HashGridSpec(levels=cfg.grid_levels, features=cfg.grid_features,
                        base_resolution=cfg.grid_base_resolution, log2_table_size=cfg.grid_log2_table_size,
                        finest_resolution=cfg.grid_finest_resolution)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HeadField(nn.Module):
    """Density, albedo and normals of the coarse NeRF, in the engine's normalised frame."""

    def __init__(self, cfg: CoarseConfig, prior: DensityPrior, device=None, backend: str | None = None):
        super().__init__()
        device = torch.device(device or "cpu")
        self.bound = cfg.bound
        self.sharpness = cfg.prior_sharpness
        self.prior = prior
        self.backend = resolve_backend(backend or cfg.encoding_backend, device)
        self.encoding = make_hash_grid(hash_grid_spec(cfg), self.backend, device)
        self.net = mlp([self.encoding.output_dim, *cfg.mlp_hidden, 3 + 1 + 3])
        self.to(device)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """`sigma` (N,), `albedo` (N, 3) in [0, 1] and unit `normals` (N, 3) at points x (N, 3)."""
        h = self.mlp_outputs(x)
        return {"sigma": self._sigma(x, h), "albedo": torch.sigmoid(h[:, 4:7]),
                "normals": F.normalize(h[:, 0:3], dim=-1)}

    def mlp_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The raw MLP head (N, 7): normal (3), density residual h0 (1), albedo logits (3)."""
        return self.net(self.encoding((x / self.bound + 1.0) * 0.5)).float()

    def _sigma(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            prior = self.prior.density(x.float(), a=self.sharpness).float()
        return F.softplus(h[:, 3] + prior)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self._sigma(x, self.mlp_outputs(x))

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp_outputs(x)[:, 4:7])

    def normals(self, x: torch.Tensor) -> torch.Tensor:
        """The normals the MLP predicts (unit length)."""
        return F.normalize(self.mlp_outputs(x)[:, 0:3], dim=-1)

    def gradient_normals(self, x: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
        """-grad(sigma) / |grad(sigma)| by central differences (differentiable w.r.t. the field)."""
        offsets = torch.eye(3, device=x.device, dtype=x.dtype) * eps
        points = torch.cat([x[:, None, :] + offsets, x[:, None, :] - offsets], dim=1).reshape(-1, 3)
        sigma = self.density(points).view(-1, 2, 3)
        grad = (sigma[:, 0] - sigma[:, 1]) / (2 * eps)
        return -F.normalize(grad, dim=-1)
