"""Occupancy grid that lets the renderer skip empty space (Instant-NGP; HeadSculpt Table 2 updates it
every 16 iterations).

Each cell keeps a running estimate of the largest density in it: every update draws one random
point per cell and sets estimate = max(decay * estimate, sigma(point)). A sample is rendered only
when its cell's estimate reaches the density threshold. The grid starts from the prior, so the very
first render already skips the empty space around the head.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

CHUNK = 1 << 18


def _chunked(fn: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    return torch.cat([fn(points[i:i + CHUNK]) for i in range(0, points.shape[0], CHUNK)])


class OccupancyGrid(nn.Module):
    def __init__(self, resolution: int, bound: float, threshold: float, decay: float):
        super().__init__()
        self.resolution = resolution
        self.bound = bound
        self.threshold = threshold
        self.decay = decay
        self.register_buffer("estimates", torch.zeros(resolution ** 3))

    @property
    def cell_size(self) -> float:
        return 2.0 * self.bound / self.resolution

    def cell_centres(self) -> torch.Tensor:
        device = self.estimates.device
        axis = (torch.arange(self.resolution, device=device, dtype=torch.float32) + 0.5) * self.cell_size - self.bound
        z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
        return torch.stack([x, y, z], dim=-1).reshape(-1, 3)

    def cell_index(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat cell index of points (N, 3), and whether each point lies inside the grid."""
        cell = ((points + self.bound) / self.cell_size).floor().long()
        inside = ((cell >= 0) & (cell < self.resolution)).all(dim=-1)
        cell = cell.clamp(0, self.resolution - 1)
        r = self.resolution
        return cell[:, 0] + r * (cell[:, 1] + r * cell[:, 2]), inside

    def occupied(self, points: torch.Tensor) -> torch.Tensor:
        index, inside = self.cell_index(points)
        return inside & (self.estimates[index] >= self.threshold)

    @torch.no_grad()
    def init_from_prior(self, density_fn: Callable[[torch.Tensor], torch.Tensor],
                        signed_distance: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Start from the field's density at cell centres, and mark every cell the prior surface may
        cross (|d| below the half diagonal) or that lies inside it, so that thin shells are kept."""
        centres = self.cell_centres()
        sigma = _chunked(lambda p: density_fn(p).float(), centres)
        near = _chunked(lambda p: signed_distance(p).float(), centres) <= 0.5 * 3 ** 0.5 * self.cell_size
        self.estimates.copy_(torch.where(near, sigma.clamp_min(self.threshold), sigma))

    @torch.no_grad()
    def update(self, density_fn: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator) -> None:
        jitter = torch.rand(self.resolution ** 3, 3, generator=generator).to(self.estimates.device)
        points = self.cell_centres() + (jitter - 0.5) * self.cell_size
        sigma = _chunked(lambda p: density_fn(p).float(), points)
        self.estimates.copy_(torch.maximum(self.estimates * self.decay, sigma))

    def occupancy(self) -> float:
        """Share of occupied cells."""
        return float((self.estimates >= self.threshold).float().mean())
