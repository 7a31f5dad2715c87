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


def test_four_jobs_run_two_at_a_time_and_all_finish(ray_server, prior_id):
    with ray_server.client() as client:
        cluster = client.get("/v1/health").json()["cluster"]
        assert (cluster["nodes"], cluster["gpus"], cluster["slots"]) == (1, 2, 2)
        jobs = [submit(client, prior_id, f"a portrait of person {i}")["job_id"] for i in range(4)]
        most, deadline = 0, time.monotonic() + 2 * JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            states = {job["job_id"]: job["state"] for job in client.get("/v1/jobs").json()["jobs"]}
            most = max(most, sum(states[job_id] == "running" for job_id in jobs))
            assert most <= 2, states
            if all(states[job_id] in FINISHED for job_id in jobs):
                break
            time.sleep(0.1)
        finished = [client.get(f"/v1/jobs/{job_id}").json() for job_id in jobs]
        assert [job["state"] for job in finished] == ["done"] * 4, [job["message"] for job in finished]
        assert most == 2
        assert all("avatar.glb" in job["result_files"] for job in finished)
        assert all(len(runs(ray_server, job_id)) == 1 for job_id in jobs)  # each ran once
        assert client.get("/v1/health").json()["cluster"]["running"] == 0


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


def test_a_killed_worker_requeues_its_job_which_resumes_from_its_checkpoint(ray_server, prior_id):
    with ray_server.client() as client:
        job_id = submit(client, prior_id, "a clay bust of a pirate")["job_id"]
        checkpoint = ray_server.data_dir / "jobs" / job_id / "coarse" / "checkpoint.pt"
        wait_for_file(ray_server, checkpoint)
        kept = checkpoint_iteration(checkpoint)
        os.kill(runs(ray_server, job_id)[0]["pid"], signal.SIGKILL)
        done = wait_for(client, job_id, FINISHED, JOB_TIMEOUT_S)
        assert done["state"] == "done", done["message"]
        assert WORKER_DIED in [event["message"] for event in done["history"]]
    first, second = runs(ray_server, job_id)
    assert first["pid"] != second["pid"]
    resumed = f"{job_id}: coarse resuming at iteration"
    assert resumed in ray_server.log() or f"{job_id}: fine resuming at iteration" in ray_server.log()
    assert kept > 0


def test_a_killed_server_re_attaches_at_restart_and_runs_nothing_twice(ray_server, prior_id):
    with ray_server.client() as client:
        jobs = [submit(client, prior_id, f"a marble bust of queen {i}")["job_id"] for i in range(2)]
        wait_for(client, jobs[0], ("running",), JOB_TIMEOUT_S, predicate=lambda job: job["iteration"] >= 1)
    ray_server.kill()  # SIGKILL: the actors are detached and go on running meanwhile
    ray_server.start()
    with ray_server.client() as client:
        finished = [wait_for(client, job_id, FINISHED, 2 * JOB_TIMEOUT_S) for job_id in jobs]
    assert [job["state"] for job in finished] == ["done"] * 2, [job["message"] for job in finished]
    assert all(len(runs(ray_server, job_id)) == 1 for job_id in jobs)
    assert f"job {jobs[0]}: re-attached to its Ray actor" in ray_server.log()


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
