"""Optional per-phase timers for the stages and the guidance (`headsculpt bench`, stage timings).

Code that wants its phases timed wraps them in `section(name)`. With no profiler active (a normal
run) that is a shared no-op context: one global lookup, no clock, no CUDA synchronisation. Inside
`profile(profiler)` each section synchronises CUDA at its edges (otherwise the GPU's asynchronous
kernels would be billed to whichever later section waits for them) and adds its *exclusive* time to
the profiler: a nested section (the VAE encode inside the guidance) is subtracted from its parent,
so the sections of one step add up to the step's time less what no section covers.

This module does not import torch unless a profiler times a CUDA device.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator

_NO_SECTION = nullcontext()
_active: "Profiler | None" = None


class Profiler:
    """Exclusive seconds per section name, summed until `take()` hands them over and starts afresh."""

    def __init__(self, device: Any = None):
        self.cuda_device = None
        if device is not None and str(device).startswith("cuda"):
            import torch

            self.cuda_device = torch.device(device)
        self.seconds: dict[str, float] = defaultdict(float)
        self._children: list[float] = []  # per open section: seconds spent in its nested sections

    def synchronize(self) -> None:
        if self.cuda_device is not None:
            import torch

            torch.cuda.synchronize(self.cuda_device)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        self.synchronize()
        began = time.perf_counter()
        self._children.append(0.0)
        try:
            yield
        finally:
            self.synchronize()
            elapsed = time.perf_counter() - began
            self.seconds[name] += elapsed - self._children.pop()
            if self._children:
                self._children[-1] += elapsed

    def take(self) -> dict[str, float]:
        taken, self.seconds = dict(self.seconds), defaultdict(float)
        return taken

    def per_iteration(self, iterations: int) -> dict[str, float]:
        """`{name}_seconds_per_iteration` means over `iterations` steps (empty when none ran)."""
        if iterations <= 0:
            return {}
        return {f"{name}_seconds_per_iteration": value / iterations for name, value in self.seconds.items()}


def section(name: str) -> ContextManager[None]:
    """Time the enclosed phase under `name` when a profiler is active; otherwise do nothing."""
    return _NO_SECTION if _active is None else _active.section(name)


@contextmanager
def profile(profiler: Profiler) -> Iterator[Profiler]:
    """Make `profiler` the active one for the enclosed code (the previous one comes back after)."""
    global _active
    previous, _active = _active, profiler
    try:
        yield profiler
    finally:
        _active = previous


def time_steps(stage, iterations: int, warmup: int = 1, device: Any = None, after_step=None,
               progress=None) -> list[dict[str, float]]:
    """Run `warmup` untimed then `iterations` timed `stage.step(i)` calls; for each timed step, its
    sections' seconds plus "total" (the whole step, wall clock), "other" (the part no section
    covers) and "cpu_total" (this process's CPU time in the step, which a busy machine inflates less).
    `after_step(record, loss)` sees each timed record and the step's return value (outside the
    timed part); `progress(steps_done)` is called after every step."""
    profiler = Profiler(device)
    records = []
    with profile(profiler):
        for iteration in range(warmup):
            stage.step(iteration)
            if progress is not None:
                progress(iteration + 1)
        profiler.take()
        for iteration in range(warmup, warmup + iterations):
            profiler.synchronize()
            began, cpu_began = time.perf_counter(), time.process_time()
            loss = stage.step(iteration)
            profiler.synchronize()
            total = time.perf_counter() - began
            record = profiler.take()
            record["other"] = max(total - sum(record.values()), 0.0)
            record["total"] = total
            record["cpu_total"] = time.process_time() - cpu_began
            if after_step is not None:
                after_step(record, loss)
            records.append(record)
            if progress is not None:
                progress(iteration + 1)
    return records


def medians(records: list[dict[str, float]]) -> dict[str, float]:
    """The median of each key over the records (a key missing from a record counts as 0 there)."""
    keys = dict.fromkeys(key for record in records for key in record)
    return {key: statistics.median(record.get(key, 0.0) for record in records) for key in keys}
