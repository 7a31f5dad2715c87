"""Issue 19: `headsculpt serve --ray` on a local Ray cluster of two GPU slots (logical GPUs on this
CPU machine), with the tiny preset and the real pipeline. Four jobs at once, two at a time; cancel;
a killed worker; a killed server; and the start-up refusals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headsculpt_engine.errors import InputError
from headsculpt_engine.server.ray_workers import RUNS_FILE, SLOT_RESOURCE, WORKER_DIED, slot_options

from .engine_server import EngineServer, wait_for
from .ray_cluster import RayCluster, free_port
from .test_jobs_e2e import JOB_TIMEOUT_S, checkpoint_iteration, submit, upload, wait_for_file

FINISHED = ("done", "failed", "cancelled")


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = RayCluster(gpus=2)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ray_server(ray_cluster, tmp_path_factory):
    server = EngineServer(tmp_path_factory.mktemp("ray") / "data", extra_args=("--ray", ray_cluster.address))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def prior_id(ray_server) -> str:
    with ray_server.client() as client:
        return upload(client)


def runs(server: EngineServer, job_id: str) -> list[dict]:
    """One line per Ray actor that started the job."""
    path = server.data_dir / "jobs" / job_id / RUNS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Watch:
    """Polls the jobs' states, keeping the most that ran at one moment."""

    def __init__(self, jobs: list[str]):
        self.jobs, self.most, self.states = jobs, 0, {}

    def poll(self, client) -> dict[str, dict]:
        listed = {job["job_id"]: job for job in client.get("/v1/jobs").json()["jobs"]}
        self.states = {job_id: listed[job_id] for job_id in self.jobs}
        self.most = max(self.most, sum(job["state"] == "running" for job in self.states.values()))
        assert self.most <= 2, self.states
        return self.states

    def until(self, client, done, timeout_s: float = JOB_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not done(self.poll(client)):
            assert time.monotonic() < deadline, self.states
            time.sleep(0.1)


def test_four_jobs_two_at_a_time_through_a_killed_worker_and_a_killed_server(ray_server, prior_id):
    """One run of four jobs covers the cluster's promises: at most two run at once and two do run
    together; the job whose worker is killed goes back to the queue and resumes from its checkpoint;
    the server killed while jobs run re-attaches to them at restart; no job runs twice otherwise."""
    with ray_server.client() as client:
        cluster = client.get("/v1/health").json()["cluster"]
        assert (cluster["nodes"], cluster["gpus"], cluster["slots"]) == (1, 2, 2)
        jobs = [submit(client, prior_id, f"a portrait of person {i}")["job_id"] for i in range(4)]
        watch = Watch(jobs)
        victim = jobs[0]
        checkpoint = ray_server.data_dir / "jobs" / victim / "coarse" / "checkpoint.pt"
        watch.until(client, lambda states: checkpoint.exists())
        kept = checkpoint_iteration(checkpoint)
        os.kill(runs(ray_server, victim)[0]["pid"], signal.SIGKILL)
        watch.until(client, lambda states: WORKER_DIED in [e["message"] for e in client.get(
            f"/v1/jobs/{victim}").json()["history"]])
        watch.until(client, lambda states: any(job["state"] == "running" and job["iteration"] >= 1
                                               for job_id, job in states.items() if job_id != victim))
        running = [job_id for job_id, job in watch.states.items() if job["state"] == "running"]
    ray_server.kill()  # SIGKILL: the actors are detached and go on running meanwhile
    ray_server.start()
    with ray_server.client() as client:
        watch.until(client, lambda states: all(job["state"] in FINISHED for job in states.values()),
                    2 * JOB_TIMEOUT_S)
        finished = [client.get(f"/v1/jobs/{job_id}").json() for job_id in jobs]
        assert [job["state"] for job in finished] == ["done"] * 4, [job["message"] for job in finished]
        assert all("avatar.glb" in job["result_files"] for job in finished)
        assert client.get("/v1/health").json()["cluster"]["running"] == 0
    assert watch.most == 2
    first, second = runs(ray_server, victim)
    assert first["pid"] != second["pid"] and kept > 0
    log = ray_server.log()
    assert f"{victim}: coarse resuming at iteration" in log or f"{victim}: fine resuming at iteration" in log
    assert any(f"job {job_id}: re-attached to its Ray actor" in log for job_id in running), running
    assert all(len(runs(ray_server, job_id)) == 1 for job_id in jobs[1:])  # the others ran once


def test_a_cancelled_running_job_stops_within_seconds(ray_server, prior_id):
    with ray_server.client() as client:
        job_id = submit(client, prior_id, "a bust of a Roman emperor")["job_id"]
        wait_for(client, job_id, ("running",), JOB_TIMEOUT_S,
                 predicate=lambda job: job["stage"] == "coarse" and job["iteration"] >= 1)
        start = time.monotonic()
        client.post(f"/v1/jobs/{job_id}/cancel")
        final = wait_for(client, job_id, FINISHED, 60)
        assert final["state"] == "cancelled", final
        assert time.monotonic() - start < 10
        assert "checkpoint" in final["message"] and final["result_files"] == []
        assert client.get("/v1/health").json()["cluster"]["running"] == 0


def serve_fails(*args: str, env: dict[str, str] | None = None, data: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headsculpt_engine", "serve", "--data", str(data), "--models",
                           "tiny", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


def test_an_unreachable_ray_address_fails_at_start_with_a_sentence(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    result = serve_fails("--ray", address, data=tmp_path / "data")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"No Ray cluster answers at {address}" in result.stderr and "ray start --head" in result.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "data" / "server.json").exists()


def test_a_cluster_without_the_engine_fails_at_start_with_a_sentence(ray_cluster, tmp_path):
    # The workers of this server's Ray job see a headsculpt_engine that cannot be imported, as on a
    # cluster where the engine is not installed (a job's runtime env, as `ray job submit` passes it).
    hidden = tmp_path / "hidden" / "headsculpt_engine"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('not installed on this cluster')\n")
    job_config = {"runtime_env": {"env_vars": {"PYTHONPATH": str(hidden.parent)}}}
    result = serve_fails("--ray", ray_cluster.address, data=tmp_path / "data",
                         env={"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job_config)})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "The Ray cluster's workers cannot import headsculpt_engine" in result.stderr


def test_a_job_asks_for_one_gpu_or_one_cpu_slot_and_a_cluster_with_neither_is_refused():
    assert slot_options({"CPU": 16.0, "GPU": 4.0}) == {"num_gpus": 1, "num_cpus": 0}
    assert slot_options({"CPU": 16.0, SLOT_RESOURCE: 2.0}) == {"num_cpus": 0, "resources": {SLOT_RESOURCE: 1}}
    with pytest.raises(InputError, match="no GPU and no 'headsculpt_slot'"):
        slot_options({"CPU": 16.0})
