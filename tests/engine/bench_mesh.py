"""Timings for docs/benchmarks.md (## Fine stage and export): rasteriser, fine-stage iteration, export.

Run: OMP_NUM_THREADS=1 python tests/engine/bench_mesh.py  (from the repository root; not a test).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1] / "engine"), str(HERE)]
os.environ.setdefault("HEADSCULPT_CACHE_DIR", tempfile.mkdtemp(prefix="hs-bench-"))

import torch  # noqa: E402
import trimesh  # noqa: E402
from mesh_test_support import SpherePrior, TinyColour, target_renderer, two_tone  # noqa: E402

from headsculpt_engine.cameras import orbit_cameras  # noqa: E402
from headsculpt_engine.config import ExportConfig  # noqa: E402
from headsculpt_engine.guidance.oracle import oracle_guidance  # noqa: E402
from headsculpt_engine.mesh.export import export_avatar  # noqa: E402
from headsculpt_engine.mesh.marching import marching_tets  # noqa: E402
from headsculpt_engine.mesh.raster import make_rasterizer  # noqa: E402
from headsculpt_engine.mesh.tets import band_grid  # noqa: E402
from headsculpt_engine.stages.fine import FineResult, run_fine  # noqa: E402
from test_fine_stage import small_config  # noqa: E402


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_raster() -> None:
    rast = make_rasterizer("cpu", "torch")
    for subdiv, size, batch in ((5, 512, 1), (7, 128, 1), (7, 64, 4)):
        sphere = trimesh.creation.icosphere(subdivisions=subdiv, radius=0.45)
        v, f = torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces)
        cams = orbit_cameras([0.0] * batch, width=size, height=size)

        def run():
            out = rast.rasterize(v, f, cams)
            rast.antialias(rast.interpolate(v, out, f), out, v, f, cams)

        print(f"raster+interpolate+antialias {len(f)} tris, {batch}x{size}^2: {best_of(run):.3f} s")


def bench_fine(resolution: int, tet_resolution: int, iterations: int = 10) -> None:
    cfg = small_config(iterations)
    cfg.fine.resolution, cfg.fine.tet_resolution, cfg.fine.batch = resolution, tet_resolution, 4
    cfg.coarse.albedo_ratio, cfg.coarse.textureless_ratio = 0.2, 0.3  # the default shading mix
    with tempfile.TemporaryDirectory() as out:
        result = run_fine(cfg, SpherePrior(0.45), oracle_guidance(target_renderer(0.5)), Path(out),
                          colour=TinyColour())
    print(f"fine stage, batch 4 at {resolution}^2, tet grid {tet_resolution}, mesh {len(result.faces)} tris: "
          f"{result.timings['seconds_per_iteration']:.3f} s/iteration")


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def albedo(self, x):
        return two_tone(x)


def bench_export(tet_resolution: int = 160, texture: int = 2048, head_field: bool = False) -> None:
    """Export of a ~190k-triangle ellipsoid; colours from an analytic field, or from a fresh
    HeadField at the paper's settings (hash grid 2^19 x 16 levels) for the real evaluation cost."""
    grid, sdf = band_grid(tet_resolution, lambda p: (p * torch.tensor([1.0, 0.85, 1.1])).norm(dim=-1) - 0.5,
                          band_cells=2.0)
    v, f = marching_tets(grid.vertices, sdf, grid.tets)
    if head_field:
        from headsculpt_engine.config import CoarseConfig
        from headsculpt_engine.nerf.field import HeadField
        from headsculpt_engine.prior import builtin_prior

        colour = HeadField(CoarseConfig(), builtin_prior())
    else:
        colour = Field()
    result = FineResult(vertices=v.detach(), faces=f, colour=colour)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        files = export_avatar(result, SpherePrior(0.5), ExportConfig(texture_size=texture), Path(out), {})
        total = time.perf_counter() - start
        import json

        stages = json.loads(Path(out, "avatar.json").read_text())["export"]["timings"]
    print(f"export {len(f)} tris, {'HeadField' if head_field else 'analytic'} colour, {texture}^2 texture, {len(files)} files: {total:.1f} s "
          + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    which = sys.argv[1:] or ["raster", "fine", "export"]
    if "raster" in which:
        bench_raster()
    if "fine" in which:
        bench_fine(128, 64)
        bench_fine(256, 128, iterations=5)
    if "export" in which:
        bench_export()
    if "export-field" in which:
        bench_export(head_field=True)
