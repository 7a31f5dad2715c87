"""Time the coarse stage per iteration, split into rendering, guidance and backward (docs/benchmarks.md)."""
from __future__ import annotations

from ..config import RunConfig
from ..guidance.base import Guidance
from .coarse import CoarseStage


def benchmark_coarse(cfg: RunConfig, prior, guidance: Guidance, iterations: int = 5, warmup: int = 1,
                     device=None) -> dict[str, float]:
    """Mean seconds per iteration of each phase over `iterations` steps after `warmup` untimed ones,
    plus the share of ray samples the occupancy grid let through to the field."""
    stage = CoarseStage(cfg, prior, guidance, device)
    for iteration in range(warmup):
        stage.step(iteration)
    stage.seconds = dict.fromkeys(stage.seconds, 0.0)
    stage.steps_timed = 0
    for iteration in range(warmup, warmup + iterations):
        stage.step(iteration)
    timings = stage.phase_timings()
    timings["total_seconds_per_iteration"] = sum(timings.values())
    c = cfg.coarse
    timings["evaluated_sample_share"] = stage.last_samples_evaluated / (c.batch * c.resolution ** 2 * c.samples_per_ray)
    return timings
