"""Multiresolution hash-grid encoding (Instant-NGP), as HeadSculpt's coarse NeRF uses it (A.1).

Two backends behind one interface: tiny-cuda-nn's fused kernel when it imports on CUDA, and a
PyTorch implementation of the same scheme everywhere else. Level l has resolution
R_l = floor(base * b^l), b = (finest / base)^(1 / (levels - 1)); its (R_l + 1)^3 grid vertices are
indexed densely when they fit the table, else by the spatial hash of Instant-NGP
(x * 1 xor y * 2654435761 xor z * 805459861, modulo the table size). Features at a point are the
trilinear interpolation of its cell's eight vertex features, concatenated over levels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

PRIMES = (1, 2654435761, 805459861)


@dataclass(frozen=True)
class HashGridSpec:
    levels: int = 16
    features: int = 2
    base_resolution: int = 16
    log2_table_size: int = 19
    finest_resolution: int = 2048

    @property
    def per_level_scale(self) -> float:
        if self.levels == 1:
            return 1.0
        return math.exp(math.log(self.finest_resolution / self.base_resolution) / (self.levels - 1))

    def resolutions(self) -> list[int]:
        return [int(math.floor(self.base_resolution * self.per_level_scale ** level)) for level in range(self.levels)]

    @property
    def output_dim(self) -> int:
        return self.levels * self.features


def level_indices(corner: torch.Tensor, resolution: int, table_size: int) -> torch.Tensor:
    """Table row of integer grid vertices `corner` (..., 3) at one level: dense when the level's
    vertices fit the table, else the Instant-NGP spatial hash."""
    return _combine(corner[..., 0], corner[..., 1], corner[..., 2], resolution, table_size)


def _combine(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, resolution: int, table_size: int) -> torch.Tensor:
    side = resolution + 1
    if side ** 3 <= table_size:
        return x + side * (y + side * z)
    # int64 products keep the low 32 bits equal to tcnn's uint32 arithmetic; the table size is a
    # power of two, so the modulo is a mask.
    return ((x * PRIMES[0]) ^ (y * PRIMES[1]) ^ (z * PRIMES[2])) & (table_size - 1)


class TorchHashGrid(nn.Module):
    """The hash grid in plain PyTorch. Inputs are in [0, 1]^3 (clamped)."""

    def __init__(self, spec: HashGridSpec, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec = spec
        self.table_size = 2 ** spec.log2_table_size
        self.level_resolutions = spec.resolutions()
        sizes = [min(self.table_size, (r + 1) ** 3) for r in self.level_resolutions]
        self.offsets = [0]
        for size in sizes:
            self.offsets.append(self.offsets[-1] + size)
        # Instant-NGP initialises the table uniformly in [-1e-4, 1e-4].
        self.table = nn.Parameter(torch.empty(self.offsets[-1], spec.features, dtype=dtype).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        return self.spec.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(0.0, 1.0).to(self.table.dtype)
        n = x.shape[0]
        rows, weights = [], []
        for level, resolution in enumerate(self.level_resolutions):
            pos = x * resolution
            # Points on the upper face belong to the last cell, so every corner stays in the grid.
            cell = pos.floor().clamp(max=resolution - 1)
            frac = pos - cell
            # Per axis: the two vertex coordinates (N, 3, 2) and their linear weights.
            coords = cell.long()[..., None] + torch.arange(2, device=x.device)
            axis_w = torch.stack([1.0 - frac, frac], dim=-1)
            cx, cy, cz = coords[:, 0, None, None, :], coords[:, 1, None, :, None], coords[:, 2, :, None, None]
            size = self.offsets[level + 1] - self.offsets[level]
            # Corner order 4k + 2j + i for the offsets (i, j, k).
            rows.append(_combine(cx, cy, cz, resolution, size).reshape(n, 8) + self.offsets[level])
            weights.append((axis_w[:, 2, :, None, None] * axis_w[:, 1, None, :, None]
                            * axis_w[:, 0, None, None, :]).reshape(n, 8))
        # One gather for all levels: its backward is a single scatter-add into the table.
        feats = self.table.index_select(0, torch.stack(rows, dim=1).reshape(-1))
        feats = feats.view(n * len(rows), 8, -1)
        w = torch.stack(weights, dim=1).reshape(n * len(rows), 1, 8)
        return torch.bmm(w, feats).view(n, -1)


class TcnnHashGrid(nn.Module):
    """tiny-cuda-nn's HashGrid with the same configuration (fp16 features, returned as float32)."""

    def __init__(self, spec: HashGridSpec):
        super().__init__()
        import tinycudann as tcnn

        self.spec = spec
        self.encoding = tcnn.Encoding(3, {
            "otype": "HashGrid", "n_levels": spec.levels, "n_features_per_level": spec.features,
            "log2_hashmap_size": spec.log2_table_size, "base_resolution": spec.base_resolution,
            "per_level_scale": spec.per_level_scale, "interpolation": "Linear"})

    @property
    def output_dim(self) -> int:
        return self.spec.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoding(x.clamp(0.0, 1.0)).float()


def tcnn_available(device: torch.device) -> bool:
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except Exception:  # an absent or broken build (ImportError, missing CUDA symbols, ...)
        return False
    return True


def resolve_backend(backend: str, device) -> str:
    """"auto" -> "tcnn" where it can run, else "torch"; an explicit "tcnn" must be able to run."""
    if backend == "auto":
        return "tcnn" if tcnn_available(device) else "torch"
    if backend == "tcnn" and not tcnn_available(device):
        from ..errors import InputError

        raise InputError("The tiny-cuda-nn hash grid needs CUDA and the tinycudann package; "
                         "set coarse.encoding_backend=torch (or auto) to use the PyTorch one.")
    return backend


def make_hash_grid(spec: HashGridSpec, backend: str, device) -> nn.Module:
    if resolve_backend(backend, device) == "tcnn":
        return TcnnHashGrid(spec)
    return TorchHashGrid(spec)
