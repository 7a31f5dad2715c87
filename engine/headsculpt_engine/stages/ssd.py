"""HeadArtist's self score distillation as two fine-stage phases (HeadArtist Sec. 4 and appendix D).

geometry: normal-map renders, SSD with CFG 100 and t in [0.02, 0.5]; the SDF and the vertex offsets
          train (an edit trains only the offsets: the parent's SDF stays fixed), the colour is frozen;
texture:  albedo renders, SSD with CFG 7.5, the negative prompt "worst quality, low quality,
          semi-realistic" and t_max 0.98, then 0.7 after 5000 iterations; the geometry is frozen.
The numbers live in config.GuidanceConfig and in `guidance.factory.SsdPhases`, which each phase drives
through `StagedGuidance`. The phases run HeadArtist's 15,000 and 20,000 iterations
(`fine.ssd_geometry_iterations`, `fine.ssd_texture_iterations`); an SSD edit uses the same split.
The geometry phase has HeadArtist's regularisers: normal consistency 8000 and the Laplacian 10000.
The geometry phase lives in RUN/geometry/, the texture phase in RUN/fine/, where every later step (export,
a later edit) expects the finished avatar.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from .refine import run_refine

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..guidance.base import Guidance
    from .fine import FineResult
    from .loop import RunCallbacks

GEOMETRY_DIR = "geometry"
TEXTURE_DIR = "fine"


def run_ssd(cfg: "RunConfig", prior, guidance: "Guidance | None", run_dir: Path, callbacks: "RunCallbacks | None",
            device, init_from: Path | None = None, colour=None) -> tuple["FineResult", dict[str, float]]:
    """Both phases in `run_dir` (each resumes or loads when finished); `init_from` is an edit's parent
    fine folder, `colour` replaces the colour field's module. Returns the texture phase's result and the
    seconds each phase took."""
    run_dir = Path(run_dir)
    f = cfg.fine
    geometry_cfg = dataclasses.replace(cfg, fine=dataclasses.replace(
        f, iterations=f.ssd_geometry_iterations, lambda_laplacian=f.ssd_lambda_laplacian,
        lambda_normal_consistency=f.ssd_lambda_normal_consistency))
    # The texture phase moves no vertex: geometry regularisers would cost time and change nothing.
    texture_cfg = dataclasses.replace(cfg, fine=dataclasses.replace(
        f, iterations=f.ssd_texture_iterations, lambda_laplacian=0.0, lambda_normal_consistency=0.0))
    geometry = run_refine(geometry_cfg, prior, guidance, run_dir / GEOMETRY_DIR, callbacks, device, init_from=init_from,
                          name="geometry", train=("offsets",) if init_from else ("sdf", "offsets"),
                          shading="normal", ssd_phase="geometry", colour=colour)
    texture = run_refine(texture_cfg, prior, guidance, run_dir / TEXTURE_DIR, callbacks, device,
                         init_from=run_dir / GEOMETRY_DIR, name="texture", train=("colour",), shading="albedo",
                         ssd_phase="texture", colour=colour)
    return texture, {"ssd_geometry": geometry.timings["seconds"], "ssd_texture": texture.timings["seconds"]}
