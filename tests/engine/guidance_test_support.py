"""Shared by the oracle-guidance tests: optimise one image under a guidance and measure how close it gets."""
from __future__ import annotations

import torch

from headsculpt_engine.guidance.base import GuidanceInputs


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def fit_image(guidance, cameras, target: torch.Tensor, lr: float, steps: int) -> tuple[float, float]:
    """Start from mid grey, take `steps` Adam steps on the guidance loss (image kept in [0, 1]); the PSNR
    to `target` before and after."""
    image = torch.full(target.shape, 0.5, requires_grad=True)
    opt = torch.optim.Adam([image], lr=lr)
    before = psnr(image.detach(), target)
    for _ in range(steps):
        out = guidance(GuidanceInputs(images=image, cameras=cameras))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        with torch.no_grad():
            image.clamp_(0, 1)
    return before, psnr(image.detach(), target)
