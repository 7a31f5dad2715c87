"""Backgrounds behind the head: a learned colour per view direction, a random solid colour per view
(so that the field cannot explain itself with the background), or plain white."""
from __future__ import annotations

import torch
from torch import nn


class Background(nn.Module):
    def __init__(self, kind: str, frequencies: int = 4, hidden: int = 32):
        super().__init__()
        self.kind = kind
        self.frequencies = frequencies
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(3 * (1 + 2 * frequencies), hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, 3))
        elif kind not in ("random", "white"):
            raise ValueError(f"Unknown background {kind!r}: choose mlp, random or white.")

    def forward(self, dirs: torch.Tensor, generator: torch.Generator | None = None,
                training: bool = True) -> torch.Tensor:
        """Colours (B, R, 3) for unit view directions (B, R, 3)."""
        if self.kind == "mlp":
            scales = 2.0 ** torch.arange(self.frequencies, device=dirs.device, dtype=dirs.dtype)
            angles = (dirs[..., None, :] * scales[:, None]).flatten(-2)
            return torch.sigmoid(self.net(torch.cat([dirs, angles.sin(), angles.cos()], dim=-1)).float())
        if self.kind == "random" and training:
            colour = torch.rand(dirs.shape[0], 1, 3, generator=generator).to(dirs.device)
            return colour.expand(-1, dirs.shape[1], -1)
        return torch.ones_like(dirs)
