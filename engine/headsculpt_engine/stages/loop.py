"""The contract every training stage keeps: progress with ETA, cancellation every iteration,
atomic checkpoints every N iterations and at the end, exact resume, and previews.

A stage implements `TrainableStage` (one optimisation step, its full state, a preview); `run_stage`
drives it. The CLI shows progress with a bar, the server stores it in the job: both only pass
`RunCallbacks`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from ..errors import Cancelled

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class Progress:
    stage: str
    iteration: int  # iterations completed
    total: int
    loss: float | None = None
    eta_s: float | None = None
    message: str = ""


@dataclass
class RunCallbacks:
    """How a run reports to whoever started it. Every hook is optional."""

    on_progress: Callable[[Progress], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    on_preview: Callable[[Path], None] | None = None
    on_checkpoint: Callable[[Path], None] | None = None

    def progress(self, progress: Progress) -> None:
        if self.on_progress:
            self.on_progress(progress)

    def cancelled(self) -> bool:
        return bool(self.should_cancel and self.should_cancel())


class TrainableStage(Protocol):
    name: str
    total_iterations: int

    def step(self, iteration: int) -> float:
        """Run optimisation step `iteration` (0-based); return its loss."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: parameters, optimiser, random generator states."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...

    def save_preview(self, iteration: int, directory: Path) -> Path:
        """Write a preview image for the current state and return its path."""


@dataclass
class StageSchedule:
    checkpoint_every: int = 500
    preview_every: int = 500


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device=None) -> dict[str, Any]:
    import torch

    # The engine wrote this file itself; weights_only keeps it from running code all the same.
    return torch.load(path, map_location=device, weights_only=True)


def run_stage(stage: TrainableStage, out_dir: Path, callbacks: RunCallbacks | None = None,
              schedule: StageSchedule | None = None, device=None) -> dict[str, float]:
    """Train `stage` to its last iteration, resuming from `out_dir/checkpoint.pt` when present.

    Raises `Cancelled` (after writing a checkpoint) when `callbacks.should_cancel()` turns true.
    Returns timings in seconds.
    """
    callbacks = callbacks or RunCallbacks()
    schedule = schedule or StageSchedule()
    out_dir.mkdir(parents=True, exist_ok=True)
    previews = out_dir / "previews"
    checkpoint = out_dir / CHECKPOINT_NAME
    start = 0
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, device)
        stage.load_state_dict(state["stage"])
        start = int(state["iteration"])
    total = stage.total_iterations

    def save(iteration: int) -> None:
        save_checkpoint({"iteration": iteration, "stage": stage.state_dict()}, checkpoint)
        if callbacks.on_checkpoint:
            callbacks.on_checkpoint(checkpoint)

    began = time.perf_counter()
    loss = None
    callbacks.progress(Progress(stage.name, start, total, message="resuming" if start else "starting"))
    for iteration in range(start, total):
        if callbacks.cancelled():
            save(iteration)
            raise Cancelled(f"{stage.name} stage cancelled at iteration {iteration} of {total}; "
                            "its checkpoint is kept.")
        loss = float(stage.step(iteration))
        done = iteration + 1
        elapsed = time.perf_counter() - began
        eta = elapsed / (done - start) * (total - done)
        callbacks.progress(Progress(stage.name, done, total, loss=loss, eta_s=eta))
        if schedule.preview_every and (done % schedule.preview_every == 0 or done == total):
            path = stage.save_preview(done, previews)
            if callbacks.on_preview:
                callbacks.on_preview(path)
        if done == total or (schedule.checkpoint_every and done % schedule.checkpoint_every == 0):
            save(done)
    if start >= total:  # already finished earlier: nothing to train
        callbacks.progress(Progress(stage.name, total, total, message="already complete"))
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "iterations": float(total - start),
            "seconds_per_iteration": seconds / max(total - start, 1)}
