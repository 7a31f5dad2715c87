"""The PyTorch hash grid against a direct per-point reference, and its gradients."""
import math

import pytest
import torch

from headsculpt_engine.config import preset_config
from headsculpt_engine.nerf.hashgrid import HashGridSpec, TorchHashGrid, resolve_backend


def reference_level(table: torch.Tensor, point, scale: float, resolution: int, dense: bool) -> torch.Tensor:
    """One level, point by point in plain Python with tiny-cuda-nn's conventions: position
    x * scale + 0.5, the eight corners, their rows (dense or uint32 hash, modulo the table), weights."""
    size = table.shape[0]
    pos = [min(max(c, 0.0), 1.0) * scale + 0.5 for c in point]
    cell = [int(math.floor(p)) for p in pos]
    frac = [p - c for p, c in zip(pos, cell)]
    out = torch.zeros(table.shape[1], dtype=table.dtype)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                x, y, z = cell[0] + dx, cell[1] + dy, cell[2] + dz
                if dense:
                    row = (x + resolution * (y + resolution * z)) % size
                else:
                    row = (((x * 1) ^ (y * 2654435761) ^ (z * 805459861)) % 2 ** 32) % size
                w = ((frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1])
                     * (frac[2] if dz else 1 - frac[2]))
                out += w * table[row]
    return out


@pytest.mark.parametrize("base,log2_size,dense", [(7, 12, True), (40, 10, False)])
def test_one_level_matches_direct_trilinear_reference(base, log2_size, dense):
    spec = HashGridSpec(levels=1, features=2, base_resolution=base, log2_table_size=log2_size, finest_resolution=base)
    grid = TorchHashGrid(spec)
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0)
    scale, resolution = base - 1.0, base  # level 0: s = base - 1, R = ceil(s) + 1
    assert (grid.level_scales[0], grid.level_resolutions[0]) == (scale, resolution)
    assert grid.table.shape[0] == (-(-resolution ** 3 // 8) * 8 if dense else 2 ** log2_size)
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(64, 3, generator=gen)
    points[0] = torch.tensor([1.0, 0.0, 1.0])  # corners of the cube are valid inputs too
    points[1] = torch.tensor([0.5, 1.0, 0.25])
    got = grid(points)
    expected = torch.stack([reference_level(grid.table.detach(), p.tolist(), scale, resolution, dense)
                            for p in points])
    assert torch.allclose(got, expected, atol=1e-5)


def test_levels_follow_the_configured_geometric_series():
    cfg = preset_config("paper").coarse
    spec = HashGridSpec(cfg.grid_levels, cfg.grid_features, cfg.grid_base_resolution, cfg.grid_log2_table_size,
                        cfg.grid_finest_resolution)
    res = spec.resolutions()
    assert len(res) == 16 and res[0] == 16 and 2047 <= res[-1] <= 2049
    assert all(a < b for a, b in zip(res[:-1], res[1:]))
    assert spec.output_dim == 32
    grid = TorchHashGrid(spec)
    # Coarse levels that fit 2^19 entries are dense; the rest use the full table.
    sizes = [b - a for a, b in zip(grid.offsets[:-1], grid.offsets[1:])]
    assert sizes[0] == 16 ** 3 and sizes[-1] == 2 ** 19 and max(sizes) == 2 ** 19
    assert grid(torch.rand(10, 3)).shape == (10, 32)


def test_gradcheck_in_float64():
    spec = HashGridSpec(levels=3, features=2, base_resolution=3, log2_table_size=6, finest_resolution=12)
    grid = TorchHashGrid(spec, dtype=torch.float64)
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0)
    gen = torch.Generator().manual_seed(1)
    # Keep points away from cell faces, where trilinear interpolation has kinks.
    points = (0.05 + 0.9 * torch.rand(6, 3, generator=gen, dtype=torch.float64))
    points.requires_grad_(True)
    table = grid.table.detach().clone().requires_grad_(True)

    def fn(x, t):
        return torch.func.functional_call(grid, {"table": t}, (x,))

    assert torch.autograd.gradcheck(fn, (points, table), eps=1e-6, atol=1e-6)


def test_auto_backend_is_torch_without_cuda():
    assert resolve_backend("auto", "cpu") == "torch"
