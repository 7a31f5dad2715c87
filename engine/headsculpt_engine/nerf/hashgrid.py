"""Multiresolution hash-grid encoding (Instant-NGP), as HeadSculpt's coarse NeRF uses it (A.1).

Two backends behind one interface: tiny-cuda-nn's fused kernel when it imports on CUDA, and a
PyTorch implementation of the same scheme, with tiny-cuda-nn's conventions, everywhere else:

- level l has scale s_l = base * b^l - 1, b = (finest / base)^(1 / (levels - 1)), and resolution
  R_l = ceil(s_l) + 1 vertices per axis; a point x in [0, 1]^3 sits at x * s_l + 0.5 in its grid;
- the level's table has min(R_l^3, 2^log2_table_size) rows (rounded up to a multiple of 8);
- a vertex (i, j, k) is indexed densely, i + R_l (j + R_l k), when R_l^3 fits the table, else by the
  spatial hash (i * 1 xor j * 2654435761 xor k * 805459861) in uint32 arithmetic; both modulo the
  table size;
- features are the trilinear interpolation of the cell's eight vertices, concatenated over levels.
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

    def scales(self) -> list[float]:
        log2_scale = math.log2(self.per_level_scale)
        return [2.0 ** (level * log2_scale) * self.base_resolution - 1.0 for level in range(self.levels)]

    def resolutions(self) -> list[int]:
        return [int(math.ceil(scale)) + 1 for scale in self.scales()]

    def table_sizes(self) -> list[int]:
        cap = 2 ** self.log2_table_size
        return [-(-min(r ** 3, cap) // 8) * 8 for r in self.resolutions()]

    @property
    def output_dim(self) -> int:
        return self.levels * self.features


def vertex_rows(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, resolution: int, table_size: int) -> torch.Tensor:
    """Table rows of integer grid vertices (broadcast x, y, z) at one level."""
    if resolution ** 3 <= table_size:
        return (x + resolution * (y + resolution * z)) % table_size
    # int64 products keep the low 32 bits of tcnn's uint32 products; mask to 32 bits, then modulo.
    hashed = ((x * PRIMES[0]) ^ (y * PRIMES[1]) ^ (z * PRIMES[2])) & 0xFFFFFFFF
    return hashed % table_size


class TorchHashGrid(nn.Module):
    """The hash grid in plain PyTorch. Inputs are in [0, 1]^3 (clamped)."""

    def __init__(self, spec: HashGridSpec, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec = spec
        self.level_scales = spec.scales()
        self.level_resolutions = spec.resolutions()
        self.offsets = [0]
        for size in spec.table_sizes():
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
        for level, (scale, resolution) in enumerate(zip(self.level_scales, self.level_resolutions)):
            pos = x * scale + 0.5
            cell = pos.floor()
            frac = pos - cell
            # Per axis: the two vertex coordinates (N, 3, 2) and their linear weights.
            coords = cell.long()[..., None] + torch.arange(2, device=x.device)
            axis_w = torch.stack([1.0 - frac, frac], dim=-1)
            cx, cy, cz = coords[:, 0, None, None, :], coords[:, 1, None, :, None], coords[:, 2, :, None, None]
            size = self.offsets[level + 1] - self.offsets[level]
            # Corner order 4k + 2j + i for the offsets (i, j, k).
            rows.append(vertex_rows(cx, cy, cz, resolution, size).reshape(n, 8) + self.offsets[level])
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
        if x.shape[0] == 0:  # the kernel launch needs at least one point
            return x.new_zeros(0, self.output_dim)
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
