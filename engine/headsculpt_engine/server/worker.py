"""The single worker thread: takes queued jobs in submission order and runs them on the device.

What a job does is injected (`run_job`), so the queue mechanics are tested without the pipeline.
A failing job never takes the server down: it ends `failed` with a reason a person can act on.
"""
from __future__ import annotations

import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from ..errors import Cancelled, HeadSculptError
from ..stages.loop import Progress, RunCallbacks
from .store import JobRecord, JobStore

log = logging.getLogger("headsculpt.server")

# run_job(job, run_dir, callbacks) does the work; it raises Cancelled when callbacks ask it to stop.
RunJob = Callable[[JobRecord, Path, RunCallbacks], None]

OOM_ADVICE = ("ran out of memory{where}: submit it again with a lower preset (draft or tiny), or start "
              "the engine on a GPU with more memory or with --cpu-offload.")


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")  # only a job that imported torch can hit a CUDA OOM
    return torch is not None and isinstance(error, torch.cuda.OutOfMemoryError)


def failure_message(error: BaseException, stage: str) -> str:
    """The sentence a failed job shows: what went wrong and what to change."""
    if isinstance(error, HeadSculptError):
        return str(error)
    where = f" in the {stage} stage" if stage else ""
    if _is_out_of_memory(error):
        return "The job " + OOM_ADVICE.format(where=where)
    return (f"The job failed{where} with an internal error ({type(error).__name__}: {error}); "
            "the server log has the details.")


class ProgressRecorder:
    """`RunCallbacks` for one job: progress to the job row (throttled), cancel flag, latest preview."""

    def __init__(self, store: JobStore, job: JobRecord, stopping: threading.Event,
                 min_interval_s: float = 0.25):
        self.store, self.job_id, self.stopping = store, job.job_id, stopping
        self.run_dir = store.run_dir(job.job_id)
        self.min_interval_s = min_interval_s
        self.stage = job.stage
        self._last_write = 0.0

    def on_progress(self, progress: Progress) -> None:
        if progress.message:  # "starting", "resuming", "already complete": worth a line in the log
            log.info("job %s: %s %s at iteration %d of %d", self.job_id, progress.stage, progress.message,
                     progress.iteration, progress.total)
        now = time.monotonic()
        boundary = progress.stage != self.stage or progress.iteration in (0, progress.total)
        if not boundary and now - self._last_write < self.min_interval_s:
            return
        self.stage, self._last_write = progress.stage, now
        self.store.update_progress(self.job_id, progress.stage, progress.iteration, progress.total,
                                   _finite(progress.loss), _finite(progress.eta_s))

    def should_cancel(self) -> bool:
        return self.stopping.is_set() or self.store.cancel_requested(self.job_id)

    def on_preview(self, path: Path) -> None:
        try:
            relative = Path(path).resolve().relative_to(self.run_dir.resolve())
        except ValueError:
            log.warning("ignoring a preview outside the job folder: %s", path)
            return
        self.store.set_preview(self.job_id, relative.as_posix())

    def callbacks(self) -> RunCallbacks:
        return RunCallbacks(on_progress=self.on_progress, should_cancel=self.should_cancel,
                            on_preview=self.on_preview)


class QueueThread:
    """A daemon thread that takes jobs off the queue (`_loop`): `wake` on a submission, `stop` to end."""

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _start_thread(self, name: str) -> None:
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        """A job was submitted: look at the queue now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout_s: float | None = None) -> None:
        """Set the stopping flag (a running job sees it) and wait for the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


class Worker(QueueThread):
    """Runs queued jobs one at a time in a daemon thread; `stop` lets the running job checkpoint, and
    it stays queued to resume at the next start."""

    def __init__(self, store: JobStore, run_job: RunJob, poll_interval_s: float = 1.0):
        super().__init__()
        self.store, self.run_job = store, run_job
        self.poll_interval_s = poll_interval_s

    def start(self) -> None:
        resumed = self.store.requeue_interrupted()
        if resumed:
            log.info("%d interrupted job(s) queued to resume from their checkpoints", resumed)
        self._start_thread("headsculpt-worker")

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.store.next_queued()
                if job is None:
                    self._wake.wait(self.poll_interval_s)
                    self._wake.clear()
                elif self.store.claim(job.job_id):
                    self._run(job)
            except Exception:  # noqa: BLE001 - e.g. a locked or full disk: keep the worker alive
                log.exception("the worker could not read or update the job store; retrying")
                self._stopping.wait(self.poll_interval_s)

    def _run(self, job: JobRecord) -> None:
        recorder = ProgressRecorder(self.store, job, self._stopping)
        log.info("job %s (%s) started", job.job_id, job.kind)
        try:
            self.run_job(job, self.store.run_dir(job.job_id), recorder.callbacks())
        except Cancelled as error:
            if self._stopping.is_set() and not self.store.cancel_requested(job.job_id):
                self.store.requeue(job.job_id, "The engine shut down during this job; "
                                               "it resumes from its last checkpoint at the next start.")
            else:
                self.store.finish(job.job_id, "cancelled", str(error))
        except Exception as error:  # noqa: BLE001 - any failure ends this job, never the server
            if not isinstance(error, HeadSculptError):
                log.exception("job %s failed", job.job_id)
            self.store.finish(job.job_id, "failed", failure_message(error, recorder.stage))
        else:
            self.store.finish(job.job_id, "done")
        finally:
            # Whatever the outcome, drop references to the job's tensors before the next one.
            _release_device_memory()
        log.info("job %s ended", job.job_id)


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: a diverged loss is shown as unknown."""
    return value if value is not None and math.isfinite(value) else None


def _release_device_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
