"""Timings of the mesh side for docs/benchmarks.md ("Fine stage and export"): the rasteriser and the export.

    python -m headsculpt_engine.mesh.benchmark [raster] [export] [export-field] [decimate] [fine-grid] [--device cpu|cuda]

raster: rasterise + interpolate + antialias of icospheres at three sizes (best of 3), with the
rasteriser the device gets (nvdiffrast on CUDA when installed, else the PyTorch one).
export: the whole export (unwrap, bake, GLB + OBJ/MTL/PNG, turntable, GIF, JSON) of a ~190k-triangle
ellipsoid from marching tetrahedra with a 2048x2048 texture; colours from an analytic field, or with
`export-field` from a fresh `HeadField` at the paper's settings (the real cost of evaluating it).
decimate: the export's mesh hygiene (mesh/hygiene.py) on that ellipsoid written in the built-in
prior's frame: quadric decimation to `export.target_faces` (50,000; best of 3) and the Hausdorff
distance of the result to the undecimated surface, in prior units (metres) and as a share of the
prior's bounding-box diagonal.

fine-grid: the paper preset's DMTet grid (256, fitted to the built-in head's extent + 0.1, its band)
built from the prior's signed distance, then one geometry step (marching tetrahedra, the Laplacian,
backward): sizes, seconds and the process's peak memory (CPU RSS; CUDA peak allocation on cuda).
The fine stage's iteration is timed by `headsculpt bench --stage fine`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_raster(device: torch.device) -> None:
    import trimesh

    from ..cameras import orbit_cameras
    from .raster import make_rasterizer

    rast = make_rasterizer(device, "auto")
    for subdivisions, size, batch in ((5, 512, 1), (7, 128, 1), (7, 64, 4)):  # (icosphere level, size, batch)
        sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.45)
        v = torch.tensor(sphere.vertices, dtype=torch.float32, device=device)
        f = torch.tensor(sphere.faces, dtype=torch.int32, device=device)
        cams = orbit_cameras([0.0] * batch, width=size, height=size, device=device)

        def run():
            out = rast.rasterize(v, f, cams)
            rast.antialias(rast.interpolate(v, out, f), out, v, f, cams)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        print(f"{rast.name} raster+interpolate+antialias {len(f)} tris, {batch}x{size}^2: {best_of(run):.3f} s")


class AnalyticColour(torch.nn.Module):
    """Two colours split by the plane x = 0, with the colour interface the export evaluates."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        left = torch.tensor([0.8, 0.3, 0.2], device=x.device)
        right = torch.tensor([0.2, 0.4, 0.9], device=x.device)
        return torch.where(x[:, :1] < 0, left, right)


def ellipsoid(tet_resolution: int):
    """The ~190k-triangle (tet grid 160) marching-tetrahedra ellipsoid the export timings use."""
    from .marching import marching_tets
    from .tets import band_grid

    radii = torch.tensor([1.0, 0.85, 1.1])
    grid, sdf = band_grid(tet_resolution, lambda p: (p * radii).norm(dim=-1) - 0.5, band_cells=2.0)
    return marching_tets(grid.vertices, sdf, grid.tets)


def bench_decimate(tet_resolution: int = 160) -> None:
    import numpy as np

    from ..config import ExportConfig
    from ..prior import builtin_prior
    from .hygiene import decimate, surface_deviation

    vertices, faces = ellipsoid(tet_resolution)
    prior = builtin_prior()
    v = prior.transform.to_canonical(vertices.numpy().astype(np.float64))
    f = faces.numpy()
    target = ExportConfig().target_faces
    seconds = best_of(lambda: decimate(v, f, target))
    dv, df = decimate(v, f, target)
    hausdorff = surface_deviation(v, f, dv, df)
    canon = prior.transform.to_canonical(prior.vertices.astype(np.float64))
    diagonal = float(np.linalg.norm(np.ptp(canon, axis=0)))
    print(f"decimate {len(f)} -> {len(df)} tris: {seconds:.2f} s, Hausdorff {hausdorff * 1000:.3f} mm "
          f"({100 * hausdorff / diagonal:.3f}% of the prior's {diagonal:.3f} m diagonal)")


def bench_export(head_field: bool, tet_resolution: int = 160, texture: int = 2048) -> None:
    from ..config import CoarseConfig, ExportConfig
    from ..prior import builtin_prior
    from ..stages.fine import FineResult
    from .export import export_avatar

    vertices, faces = ellipsoid(tet_resolution)
    prior = builtin_prior()  # only its frame is used: the mesh is written in its canonical frame
    if head_field:
        from ..nerf.field import HeadField

        colour = HeadField(CoarseConfig(), prior)
    else:
        colour = AnalyticColour()
    result = FineResult(vertices=vertices.detach(), faces=faces, colour=colour)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        files = export_avatar(result, prior, ExportConfig(texture_size=texture), Path(out), {})
        total = time.perf_counter() - start
        phases = json.loads(Path(out, "avatar.json").read_text())["export"]["timings"]
    print(f"export {len(faces)} tris, {'HeadField' if head_field else 'analytic'} colour, {texture}^2 texture, "
          f"{len(files)} files: {total:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) + ")")


def bench_fine_grid(device: torch.device, band_cells: float | None) -> None:
    import resource

    from ..config import preset_config
    from ..prior import builtin_prior
    from ..stages.fine import DMTetGeometry, fine_grid, grid_bound, laplacian_loss

    cfg = preset_config("paper")
    if band_cells is not None:
        cfg.fine.band_cells = band_cells
    prior = builtin_prior()
    start = time.perf_counter()
    bound = grid_bound(cfg, prior.signed_distance, device)
    grid, sdf = fine_grid(cfg, prior.signed_distance, device)
    built = time.perf_counter() - start
    geometry = DMTetGeometry(grid, sdf, cfg.fine.max_offset_cells).to(device)
    start = time.perf_counter()
    vertices, faces = geometry.extract()
    (cfg.fine.lambda_laplacian * laplacian_loss(vertices, faces) + vertices.sum()).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    step = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB (Linux)
    cuda = f", CUDA peak {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB" if device.type == "cuda" else ""
    print(f"fine grid {cfg.fine.tet_resolution}, half-size {bound:.3f} (cell {grid.cell_size:.5f}), band "
          f"{cfg.fine.band_cells:g} cells: {grid.vertices.shape[0]} vertices, {grid.tets.shape[0]} tets, built in "
          f"{built:.1f} s; one geometry step {step:.2f} s ({faces.shape[0]} triangles); peak RSS {rss:.2f} GiB{cuda}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="*", choices=("raster", "export", "export-field", "decimate", "fine-grid"),
                        default=["raster", "export"])
    parser.add_argument("--band-cells", type=float, default=None, help="fine-grid: band width (default: the preset's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tet-resolution", type=int, default=160, help="export mesh: tet grid (160: ~190k triangles)")
    parser.add_argument("--texture", type=int, default=2048, help="export texture size")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if "raster" in args.what:
        bench_raster(device)
    if "export" in args.what:
        bench_export(False, args.tet_resolution, args.texture)
    if "export-field" in args.what:
        bench_export(True, args.tet_resolution, args.texture)
    if "decimate" in args.what:
        bench_decimate(args.tet_resolution)
    if "fine-grid" in args.what:
        bench_fine_grid(device, args.band_cells)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
