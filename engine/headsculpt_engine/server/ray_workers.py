"""Jobs on a Ray cluster (`headsculpt serve --ray ADDRESS`); imported only when --ray is given.

The server stays the front door and the only writer of its SQLite job table (SQLite on a network
folder is not safe with writers on several machines). Each running job is one detached, named Ray
actor asking for one slot (a GPU, or the `headsculpt_slot` resource on a CPU-only cluster). The
actor runs the pipeline in a thread on the run folder, which every node sees at the same path as
the server (a shared folder); the server polls it for progress, previews and the outcome and passes
cancel on. The actors are detached and named after their job, so a restarted server finds the ones
still running and re-attaches instead of starting them again; a job whose actor died (its worker
process or node) goes back to the queue and resumes from its last checkpoint on another worker.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from .. import __version__
from ..errors import Cancelled, HeadSculptError, InputError
from ..stages.loop import Progress, RunCallbacks
from .runner import PipelineJobs, ServerOptions
from .store import STOPPED_MESSAGE, JobRecord, JobStore
from .worker import ProgressRecorder, QueueThread, failure_message

log = logging.getLogger("headsculpt.server")

SLOT_RESOURCE = "headsculpt_slot"  # a CPU-only cluster's job slots: `ray start --resources '{"headsculpt_slot": N}'`
POLL_INTERVAL_S = 0.5
CALL_TIMEOUT_S = 30.0  # one poll of a busy actor; a slower answer is skipped until the next round
PROBE_TIMEOUT_S = 180.0  # the first task on a cold cluster starts a worker process
CANCEL_GRACE_S = 30.0  # a job loading its models cannot stop by itself: killed after this
MAX_WORKER_DEATHS = 3  # a job whose worker died this often fails instead of going round again
RUNS_FILE = "ray_runs.jsonl"  # in the run folder: one line per actor that started the job
WORKER_DIED = ("The Ray worker running this job stopped (its process or its node died); the job resumes "
               "from its last checkpoint on another worker.")


@dataclass
class Cluster:
    """The cluster the server connected to, and what one job asks of it."""

    address: str
    dashboard_url: str
    slot_options: dict[str, Any]  # Ray actor options for one job: num_gpus=1, or one headsculpt_slot

    def slots(self) -> int:
        """How many jobs the cluster runs at once now (nodes may come and go)."""
        resources = ray.cluster_resources()
        if "num_gpus" in self.slot_options:
            return int(resources.get("GPU", 0))
        return int(resources.get(SLOT_RESOURCE, 0))


def namespace_for(data_dir: Path) -> str:
    """One Ray namespace per data folder: two servers on one cluster never see each other's actors."""
    return "headsculpt-" + hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]


def actor_name(job_id: str) -> str:
    return f"headsculpt-job-{job_id}"


def slot_options(resources: dict[str, float]) -> dict[str, Any]:
    """One GPU per job; on a cluster without GPUs, one `headsculpt_slot` (CPU jobs use every core)."""
    if resources.get("GPU", 0) >= 1:
        return {"num_gpus": 1, "num_cpus": 0}
    if resources.get(SLOT_RESOURCE, 0) >= 1:
        return {"num_cpus": 0, "resources": {SLOT_RESOURCE: 1}}
    raise InputError("The Ray cluster has no GPU and no 'headsculpt_slot' resource to run jobs on: start its "
                     "nodes with GPUs, or on CPUs with --resources '{\"headsculpt_slot\": 1}' (one job per slot).")


def _check_reachable(address: str) -> None:
    """A quick TCP check of HOST:PORT: Ray itself waits a minute or more on an address with no cluster."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        raise InputError(f"No Ray cluster answers at {address} ({error.strerror or error}); start one with "
                         "`ray start --head` or give the head node's HOST:PORT to --ray.") from None


def connect(address: str, data_dir: Path) -> Cluster:
    """Join the cluster and check it can run our jobs; every problem is an InputError sentence."""
    _check_reachable(address)
    try:
        context = ray.init(address=address, namespace=namespace_for(data_dir), log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"Cannot join the Ray cluster at {address!r} ({first_line.rstrip('.')}); start one "
                         "with `ray start --head` or give the head node's HOST:PORT to --ray.") from None
    try:
        options = slot_options(ray.cluster_resources())
        _probe_workers(data_dir / "jobs")
    except BaseException:
        ray.shutdown()
        raise
    return Cluster(address=context.address_info.get("address", address),
                   dashboard_url=context.dashboard_url or "", slot_options=options)


def _probe_workers(jobs_dir: Path) -> None:
    """Run one task on the cluster: it must import this engine's version and see the data folder."""

    # Defined here, so Ray ships it by value: it runs even on a worker without the engine.
    def probe(folder: str) -> tuple[str | None, bool]:
        import importlib
        from pathlib import Path as WorkerPath

        try:
            version = importlib.import_module("headsculpt_engine").__version__
        except ImportError:
            version = None
        return version, WorkerPath(folder).is_dir()

    try:
        version, sees_folder = ray.get(ray.remote(probe).options(num_cpus=0, max_retries=0).remote(str(jobs_dir)),
                                       timeout=PROBE_TIMEOUT_S)
    except GetTimeoutError:
        raise InputError(f"The Ray cluster ran no task within {PROBE_TIMEOUT_S:.0f} s; check that its nodes "
                         "are up (`ray status`).") from None
    if version is None:
        raise InputError("The Ray cluster's workers cannot import headsculpt_engine: install the engine "
                         "(pip install 'headsculpt-engine[ray]') in the Python environment of every node.")
    if version != __version__:
        raise InputError(f"The Ray cluster's workers have headsculpt-engine {version}, this server {__version__}: "
                         "install the same version on every node.")
    if not sees_folder:
        raise InputError(f"The Ray cluster's workers do not see the data folder's {jobs_dir}: mount it at the "
                         "same path on every node (workers write the run folders there).")


class JobActor:
    """Runs one job on a Ray worker, in a thread, so that `poll` and `cancel` answer while it trains."""

    def __init__(self, job: JobRecord, jobs_dir: str, priors_root: str, options: ServerOptions):
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._events: list[Progress] = []  # what happened since the last poll (messages + the latest)
        self._preview: str | None = None
        self._outcome: tuple[str, str] | None = None  # (state, message) once the job ended
        self._stage = job.stage
        run_dir = Path(jobs_dir) / job.job_id
        with open(run_dir / RUNS_FILE, "a", encoding="utf-8") as runs:  # the record that no job ran twice
            runs.write(json.dumps({"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                                   "at": time.time()}) + "\n")
        jobs = PipelineJobs(Path(jobs_dir), Path(priors_root), options)
        callbacks = RunCallbacks(on_progress=self._on_progress, should_cancel=self._cancel.is_set,
                                 on_preview=self._on_preview)
        threading.Thread(target=self._run, args=(jobs, job, run_dir, callbacks), daemon=True).start()

    def where(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def poll(self) -> dict[str, Any]:
        with self._lock:
            events, self._events = self._events, []
            return {"events": events, "preview": self._preview, "outcome": self._outcome}

    def cancel(self) -> None:
        self._cancel.set()

    def _on_progress(self, progress: Progress) -> None:
        with self._lock:
            self._stage = progress.stage
            if self._events and not self._events[-1].message:
                self._events[-1] = progress  # only the latest plain update matters
            else:
                self._events.append(progress)

    def _on_preview(self, path: Path) -> None:
        with self._lock:
            self._preview = str(path)

    def _run(self, jobs: PipelineJobs, job: JobRecord, run_dir: Path, callbacks: RunCallbacks) -> None:
        try:
            jobs(job, run_dir, callbacks)
        except Cancelled as error:
            outcome = ("cancelled", str(error))
        except Exception as error:  # noqa: BLE001 - the job fails with its reason; the actor stays to say so
            if not isinstance(error, HeadSculptError):
                log.exception("job %s failed", job.job_id)
            outcome = ("failed", failure_message(error, self._stage))
        else:
            outcome = ("done", "")
        with self._lock:
            self._outcome = outcome


@dataclass
class _Running:
    actor: Any  # the job's ray ActorHandle
    recorder: ProgressRecorder
    cancel_sent_at: float | None = None


class RayWorkers(QueueThread):
    """The `Worker` of a --ray server: dispatches queued jobs to actors while the cluster has free slots."""

    def __init__(self, store: JobStore, priors_root: Path, options: ServerOptions, cluster: Cluster):
        super().__init__()
        self.store, self.priors_root, self.options, self.cluster = store, priors_root, options, cluster
        self._actor_class = ray.remote(JobActor)
        self._running: dict[str, _Running] = {}

    @classmethod
    def connect(cls, store: JobStore, priors_root: Path, options: ServerOptions) -> "RayWorkers":
        return cls(store, priors_root, options, connect(options.ray_address, options.data_dir))

    def start(self) -> None:
        self._reattach()
        self._start_thread("headsculpt-ray-dispatch")

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop dispatching and leave the cluster. Running jobs go on there: the next start re-attaches."""
        super().stop(timeout_s)
        if self._running:
            log.info("%d job(s) go on running on the Ray cluster; the next start re-attaches", len(self._running))
        ray.shutdown()

    def health(self) -> dict[str, Any]:
        """The cluster as the health route shows it: live nodes, GPUs, job slots, the dashboard."""
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        return {"address": self.cluster.address, "nodes": len(nodes),
                "gpus": int(ray.cluster_resources().get("GPU", 0)), "slots": self.cluster.slots(),
                "running": len(self._running), "dashboard_url": self.cluster.dashboard_url}

    def _reattach(self) -> None:
        """Jobs left `running` by the last server: follow their actors, or queue those whose actor is gone.
        Actors of this folder whose job is no longer running (finished just before a crash) are removed."""
        running = {job.job_id: job for job in self.store.list() if job.state == "running"}
        for job_id, job in running.items():
            try:
                actor = ray.get_actor(actor_name(job_id))
            except ValueError:
                self.store.requeue(job_id, STOPPED_MESSAGE)
                continue
            log.info("job %s: re-attached to its Ray actor", job_id)
            self._running[job_id] = _Running(actor, ProgressRecorder(self.store, job, threading.Event()))
        for name in ray.util.list_named_actors():
            if name.startswith(actor_name("")) and name[len(actor_name("")):] not in running:
                try:
                    ray.kill(ray.get_actor(name))
                except ValueError:  # it ended meanwhile
                    pass

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._poll_running()
                self._dispatch()
            except Exception:  # noqa: BLE001 - a locked disk or a cluster hiccup: keep dispatching
                log.exception("the Ray dispatcher hit an error; retrying")
            self._wake.wait(POLL_INTERVAL_S)
            self._wake.clear()

    def _dispatch(self) -> None:
        while len(self._running) < self.cluster.slots() and not self._stopping.is_set():
            job = self.store.next_queued()
            if job is None:
                return
            if self.store.claim(job.job_id):
                self._launch(job)

    def _launch(self, job: JobRecord) -> None:
        name = actor_name(job.job_id)
        try:
            actor = self._actor_class.options(name=name, lifetime="detached", max_restarts=0,
                                              **self.cluster.slot_options).remote(
                job, str(self.store.jobs_dir), str(self.priors_root), self.options)
        except ValueError:  # the name is taken: an actor of this job still runs; follow it, never start twice
            actor = ray.get_actor(name)
        log.info("job %s (%s) started on the Ray cluster", job.job_id, job.kind)
        self._running[job.job_id] = _Running(actor, ProgressRecorder(self.store, job, threading.Event()))

    def _poll_running(self) -> None:
        polls = {job_id: running.actor.poll.remote() for job_id, running in self._running.items()}
        for job_id, ref in polls.items():
            running = self._running[job_id]
            try:
                state = ray.get(ref, timeout=CALL_TIMEOUT_S)
            except GetTimeoutError:
                continue
            except RayActorError as error:
                self._forget(job_id)
                self._worker_died(job_id, error)
                continue
            for progress in state["events"]:
                running.recorder.on_progress(progress)
            if state["preview"]:
                running.recorder.on_preview(Path(state["preview"]))
            if state["outcome"] is not None:
                self.store.finish(job_id, *state["outcome"])
                log.info("job %s ended (%s)", job_id, state["outcome"][0])
                self._forget(job_id)
            elif running.recorder.should_cancel():
                self._pass_cancel(job_id, running)

    def _worker_died(self, job_id: str, error: RayActorError) -> None:
        """Queue the job again to resume elsewhere; fail it when its workers keep dying (a crash loop)."""
        log.warning("job %s: its Ray worker died: %s", job_id, str(error).strip()[:2000])
        job = self.store.get(job_id)
        deaths = 1 + sum(message == WORKER_DIED for _, message in job.history) if job else 1
        if deaths < MAX_WORKER_DEATHS:
            self.store.requeue(job_id, WORKER_DIED)
        else:
            self.store.finish(job_id, "failed", f"The job's Ray worker died {deaths} times; the server log and the "
                                                "worker logs (Ray's dashboard) say why.")

    def _pass_cancel(self, job_id: str, running: _Running) -> None:
        now = time.monotonic()
        if running.cancel_sent_at is None:
            running.cancel_sent_at = now
            running.actor.cancel.remote()
        elif now - running.cancel_sent_at > CANCEL_GRACE_S:
            self.store.finish(job_id, "cancelled", f"Cancelled: the Ray worker was stopped (the job did not "
                                                   f"stop by itself within {CANCEL_GRACE_S:.0f} s).")
            self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        """Free the job's slot: its actor ends (it may already be dead)."""
        running = self._running.pop(job_id)
        try:
            ray.kill(running.actor)
        except RayActorError:
            pass
