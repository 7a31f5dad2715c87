"""The shading schedule the coarse and fine stages share (the authors' code, nerf/utils.py train_step).

Warm-up iterations render with the warm-up shading (normal maps by default), ambient 1 and the
stage's default background; afterwards each iteration draws lambertian shading (or, with
probability `normal_ratio`, a normal map), an ambient ratio uniform in `ambient_range`, and, with
probability `random_background_ratio`, a random solid background colour per view instead of the
default one, so that the field cannot hide the head's colours in the background.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import CoarseConfig

PREVIEW_AMBIENT = 0.3  # ambient ratio of lit previews (training draws its own)


@dataclass(frozen=True)
class ShadingDraw:
    shading: str  # "albedo", "normal" or "lambertian"
    ambient: float
    warmup: bool
    background: torch.Tensor | None  # (B, 3) solid colours, or None for the stage's default background


def draw_shading(c: CoarseConfig, iteration: int, warmup_iterations: int, batch: int,
                 generator: torch.Generator) -> ShadingDraw:
    """This iteration's shading, ambient ratio and background (every draw from `generator`)."""
    if iteration < warmup_iterations:
        return ShadingDraw(c.warmup_shading, 1.0, True, None)
    u = torch.rand(3, generator=generator).tolist()
    shading = "normal" if u[0] < c.normal_ratio else "lambertian"
    lo, hi = c.ambient_range
    background = torch.rand(batch, 3, generator=generator) if u[2] < c.random_background_ratio else None
    return ShadingDraw(shading, lo + (hi - lo) * u[1], False, background)


def draw_lights(positions: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A light per view at the camera position plus standard normal noise, normalised: the authors'
    `safe_normalize(campos + randn(3))`, which keeps the lit side towards the camera."""
    jitter = torch.randn(positions.shape, generator=generator).to(positions)
    return torch.nn.functional.normalize(positions.float() + jitter, dim=-1)
