"""Time the coarse stage per iteration, split into its phases (docs/benchmarks.md)."""
from __future__ import annotations

from ..config import RunConfig
from ..guidance.base import Guidance
from ..profiling import medians, time_steps
from .coarse import CoarseStage


def benchmark_coarse(cfg: RunConfig, prior, guidance: Guidance, iterations: int = 5, warmup: int = 1,
                     device=None) -> dict[str, float]:
    """Median seconds per iteration of each phase (`profiling` sections: render, guidance, vae_encode,
    unet_controlnet, backward, optimizer_step, other, total) over `iterations` steps after `warmup`
    untimed ones, plus the share of ray samples the occupancy grid let through to the field."""
    stage = CoarseStage(cfg, prior, guidance, device)
    timings = {f"{key}_seconds_per_iteration": value
               for key, value in medians(time_steps(stage, iterations, warmup, stage.device)).items()}
    c = cfg.coarse
    timings["evaluated_sample_share"] = stage.last_samples_evaluated / (c.batch * c.resolution ** 2 * c.samples_per_ray)
    return timings
