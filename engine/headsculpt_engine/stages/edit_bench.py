"""Time an edit iteration against a fine-stage generation iteration (docs/benchmarks.md, "## Editing").

Both stages start from the same avatar (the built-in head's prior shape with a fresh colour field),
with the same settings and random draws: the fine stage guided by SDS (the UNet once over the
unconditional and conditional rows), the edit guided by IESD (the UNet once over four: identity and
edit, each unconditional and conditional, with the InstructPix2Pix ControlNet on the edit rows) plus
the frozen pre-edit avatar's render M_pi each step. The issue's budget: edit <= 2.2 x fine.

    python -m headsculpt_engine.stages.edit_bench --preset tiny --iterations 8
"""
from __future__ import annotations

import argparse
import statistics
import time

from ..config import RunConfig, preset_config


def _time_steps(stage, iterations: int, warmup: int) -> list[float]:
    for iteration in range(warmup):
        stage.step(iteration)
    seconds = []
    for iteration in range(warmup, warmup + iterations):
        started = time.perf_counter()
        stage.step(iteration)
        seconds.append(time.perf_counter() - started)
    return seconds


def benchmark_edit(cfg: RunConfig, prior, instruction: str = "make him old", iterations: int = 8, warmup: int = 1,
                   device="cpu") -> dict[str, float]:
    """Median seconds per iteration of the fine stage and of the edit, and their ratio."""
    from ..guidance.factory import build_edit_guidance, build_guidance
    from ..models.loading import load_diffusion_models
    from .fine import build_fine_stage
    from .refine import FrozenAvatar, RefineStage

    models = load_diffusion_models(cfg.models, device, with_ip2p=True)
    fine = build_fine_stage(cfg, prior, build_guidance(cfg, models), device, stage_class=RefineStage)
    edit = build_fine_stage(cfg, prior, build_edit_guidance(cfg, models, cfg.prompt, instruction), device,
                            stage_class=RefineStage, name="edit", reference=True)
    edit.reference = FrozenAvatar.from_stage(edit)
    fine_s = statistics.median(_time_steps(fine, iterations, warmup))
    edit_s = statistics.median(_time_steps(edit, iterations, warmup))
    return {"fine_seconds_per_iteration": fine_s, "edit_seconds_per_iteration": edit_s, "ratio": edit_s / fine_s}


def main(argv: list[str] | None = None) -> None:
    import torch

    from ..models.loading import models_config_from_cli
    from ..prior import builtin_prior

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations", type=int, default=8)
    args = parser.parse_args(argv)
    cfg = preset_config(args.preset)
    cfg.models = models_config_from_cli(args.models, cfg.models)
    cfg.prompt = "a head of an old man"
    torch.manual_seed(0)
    result = benchmark_edit(cfg, builtin_prior(), iterations=args.iterations, device=torch.device(args.device))
    print(" ".join(f"{key}={value:.4f}" for key, value in result.items()))


if __name__ == "__main__":
    main()
