"""Queue mechanics of the server, in process, with an injected job function instead of the pipeline:
order, cancel, failure reasons, shutdown and crash recovery, progress recording."""
from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from headsculpt_engine.errors import Cancelled, InputError
from headsculpt_engine.server.app import create_app
from headsculpt_engine.server.priors import BuiltPrior
from headsculpt_engine.server.runner import ServerOptions
from headsculpt_engine.server.store import JobStore
from headsculpt_engine.stages.loop import Progress

TOKEN = "test-token"


class FakeJobs:
    """Stands in for the pipeline: `steps` iterations with a checkpoint file, resumable, cancellable."""

    def __init__(self, steps: int = 5, step_s: float = 0.02):
        self.steps, self.step_s = steps, step_s
        self.started: list[str] = []
        self.fail_with: dict[str, BaseException] = {}  # prompt -> error to raise

    def __call__(self, job, run_dir: Path, callbacks) -> None:
        self.started.append(job.request["prompt"])
        if job.request["prompt"] in self.fail_with:
            callbacks.progress(Progress("coarse", 0, self.steps))
            raise self.fail_with[job.request["prompt"]]
        checkpoint = run_dir / "checkpoint.txt"
        start = int(checkpoint.read_text()) if checkpoint.exists() else 0
        with (run_dir / "starts.txt").open("a") as starts:
            starts.write(f"{start}\n")
        for i in range(start, self.steps):
            if callbacks.cancelled():
                checkpoint.write_text(str(i))
                raise Cancelled(f"cancelled at iteration {i}")
            time.sleep(self.step_s)
            callbacks.progress(Progress("coarse", i + 1, self.steps, loss=float("nan") if i == 0 else 1.0 / (i + 1)))
            (run_dir / "previews").mkdir(exist_ok=True)
            preview = run_dir / "previews" / f"{i:04d}.png"
            preview.write_bytes(b"\x89PNG fake")
            callbacks.on_preview(preview)
        (run_dir / "result").mkdir(exist_ok=True)
        (run_dir / "result" / "avatar.glb").write_bytes(b"glTF")


def fake_build(vertices, faces, landmark_file, out_dir: Path, **_) -> BuiltPrior:
    out_dir.mkdir(parents=True)
    np.save(out_dir / "vertices.npy", vertices)
    indices = np.load(landmark_file, allow_pickle=False) if landmark_file else np.zeros(0)
    return BuiltPrior(is_flame=False, landmark_count=len(indices))


def tetrahedron_upload() -> dict:
    vertices = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1]], "<f4")
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], "<i4")
    return {"name": "tet", "vertex_count": 4, "face_count": 4,
            "vertices_b64": base64.b64encode(vertices.tobytes()).decode(),
            "faces_b64": base64.b64encode(faces.tobytes()).decode()}


def upload_tetrahedron(client: TestClient) -> str:
    return client.post("/v1/priors", json=tetrahedron_upload()).json()["prior_id"]


def make_client(data: Path, jobs: FakeJobs, **options) -> TestClient:
    app = create_app(ServerOptions(data_dir=data, **options), TOKEN, run_job=jobs, build_prior=fake_build)
    return TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


def submit(client: TestClient, prior_id: str, prompt: str, preset: str = "tiny") -> dict:
    response = client.post("/v1/jobs", json={"kind": "generate", "prior_id": prior_id, "prompt": prompt,
                                             "preset": preset})
    assert response.status_code == 202, response.text
    return response.json()


def wait_state(client: TestClient, job_id: str, states: tuple[str, ...], timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job stayed {job['state']}: {job}")


def wait_iteration(client: TestClient, job_id: str, at_least: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get(f"/v1/jobs/{job_id}").json()["iteration"] < at_least:
        assert time.monotonic() < deadline, f"job {job_id} did not reach iteration {at_least}"
        time.sleep(0.01)


def test_jobs_run_in_submission_order_and_report_results(tmp_path):
    jobs = FakeJobs()
    with make_client(tmp_path, jobs) as client:
        prior = client.post("/v1/priors", json=tetrahedron_upload())
        assert prior.status_code == 201
        prior_id = prior.json()["prior_id"]
        assert upload_tetrahedron(client) == prior_id
        assert prior.json()["landmarks"]["status"] == "missing"
        submitted = [submit(client, prior_id, f"head {i}") for i in range(3)]
        finished = [wait_state(client, job["job_id"], ("done",)) for job in submitted]
        assert jobs.started == ["head 0", "head 1", "head 2"]
        listed = client.get("/v1/jobs").json()["jobs"]
        assert [job["job_id"] for job in listed] == [job["job_id"] for job in submitted]
        job = finished[0]
        assert (job["stage"], job["iteration"], job["total"], job["loss"]) == ("coarse", 5, 5, pytest.approx(0.2))
        assert job["has_preview"] and job["result_files"] == ["avatar.glb"]
        assert client.get(f"/v1/jobs/{job['job_id']}/result/avatar.glb").content == b"glTF"
        assert client.get(f"/v1/jobs/{job['job_id']}/preview").content == b"\x89PNG fake"
        assert client.get(f"/v1/jobs/{job['job_id']}/result/avatar.obj").status_code == 404
        assert client.get(f"/v1/jobs/{job['job_id']}/result/..%2Frun.json").status_code == 404
        assert client.delete(f"/v1/jobs/{job['job_id']}").status_code == 204
        assert client.get(f"/v1/jobs/{job['job_id']}").status_code == 404
        assert not (tmp_path / "jobs" / job["job_id"]).exists()


def test_cancel_queued_and_running_jobs(tmp_path):
    jobs = FakeJobs(steps=400, step_s=0.01)
    with make_client(tmp_path, jobs) as client:
        prior_id = upload_tetrahedron(client)
        running = submit(client, prior_id, "long")
        queued = submit(client, prior_id, "never runs")
        wait_iteration(client, running["job_id"], 2)
        assert client.post(f"/v1/jobs/{queued['job_id']}/cancel").json()["state"] == "cancelled"
        assert client.delete(f"/v1/jobs/{running['job_id']}").status_code == 409
        client.post(f"/v1/jobs/{running['job_id']}/cancel")
        job = wait_state(client, running["job_id"], ("cancelled", "done", "failed"))
        assert job["state"] == "cancelled" and "cancelled at iteration" in job["message"]
        assert int((tmp_path / "jobs" / running["job_id"] / "checkpoint.txt").read_text()) >= 2
        assert jobs.started == ["long"]


def test_a_failing_job_gets_a_reason_and_the_next_job_runs(tmp_path):
    jobs = FakeJobs()
    import torch

    jobs.fail_with = {"bad": InputError("The prompt says nothing we can use; describe a head."),
                      "oom": torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                      "ram": MemoryError(), "bug": RuntimeError("boom")}
    with make_client(tmp_path, jobs) as client:
        prior_id = upload_tetrahedron(client)
        bad, oom, ram, bug, good = (submit(client, prior_id, p) for p in ("bad", "oom", "ram", "bug", "good"))
        assert wait_state(client, bad["job_id"], ("failed",))["message"] == \
            "The prompt says nothing we can use; describe a head."
        message = wait_state(client, oom["job_id"], ("failed",))["message"]
        assert "out of memory in the coarse stage" in message and "lower preset" in message
        assert "--cpu-offload" in message and "GPU with more memory" in message
        assert "out of memory" in wait_state(client, ram["job_id"], ("failed",))["message"]
        assert "RuntimeError: boom" in wait_state(client, bug["job_id"], ("failed",))["message"]
        assert wait_state(client, good["job_id"], ("done", "failed"))["state"] == "done"
        assert client.get("/v1/health").json()["status"] == "ok"


def test_shutdown_requeues_the_running_job_and_a_restart_resumes_it(tmp_path):
    jobs = FakeJobs(steps=60, step_s=0.02)
    with make_client(tmp_path, jobs) as client:
        prior_id = upload_tetrahedron(client)
        job = submit(client, prior_id, "resumable")
        later = submit(client, prior_id, "later")
        wait_state(client, job["job_id"], ("running",))
        wait_iteration(client, job["job_id"], 3)
    # The lifespan ended (as on SIGTERM): the job checkpointed and waits in the queue.
    store = JobStore(tmp_path)
    assert store.get(job["job_id"]).state == "queued"
    assert "resumes" in store.get(job["job_id"]).message
    assert store.get(later["job_id"]).state == "queued"
    checkpoint = int((tmp_path / "jobs" / job["job_id"] / "checkpoint.txt").read_text())
    assert checkpoint >= 3
    with make_client(tmp_path, jobs) as client:
        assert wait_state(client, job["job_id"], ("done",))["iteration"] == 60
        assert wait_state(client, later["job_id"], ("done",))["state"] == "done"
    starts = (tmp_path / "jobs" / job["job_id"] / "starts.txt").read_text().split()
    assert starts == ["0", str(checkpoint)]


def test_a_job_left_running_by_a_crash_is_queued_again_first(tmp_path):
    store = JobStore(tmp_path)
    crashed = store.submit("generate", {"prompt": "crashed", "seed": 0, "preset": "tiny", "prior_id": "p"})
    waiting = store.submit("generate", {"prompt": "waiting", "seed": 0, "preset": "tiny", "prior_id": "p"})
    assert store.claim(crashed.job_id)
    jobs = FakeJobs(steps=2)
    with make_client(tmp_path, jobs) as client:
        wait_state(client, waiting.job_id, ("done",))
    assert jobs.started == ["crashed", "waiting"]


def test_concurrent_claim_and_cancel_never_both_win(tmp_path):
    store = JobStore(tmp_path)
    for _ in range(20):
        job = store.submit("generate", {"prompt": "x", "seed": 0, "preset": "tiny"})
        claimed: list[bool] = []
        thread = threading.Thread(target=lambda: claimed.append(store.claim(job.job_id)))
        thread.start()
        store.request_cancel(job.job_id)
        thread.join()
        state = store.get(job.job_id).state
        assert (state, claimed[0]) in (("running", True), ("cancelled", False))


def test_preset_limit_and_edit_parent_checks(tmp_path):
    with make_client(tmp_path, FakeJobs(), preset_limit="draft") as client:
        prior_id = upload_tetrahedron(client)
        refused = client.post("/v1/jobs", json={"kind": "generate", "prior_id": prior_id, "prompt": "a",
                                                "preset": "paper"})
        assert refused.status_code == 422 and "--preset-limit draft" in refused.json()["detail"]
        unknown = client.post("/v1/jobs", json={"kind": "generate", "prior_id": "nope", "prompt": "a",
                                                "preset": "tiny"})
        assert unknown.status_code == 422 and "upload the prior" in unknown.json()["detail"]
        parent = submit(client, prior_id, "parent")
        wait_state(client, parent["job_id"], ("done",))
        edit = client.post("/v1/jobs", json={"kind": "edit", "parent_job_id": parent["job_id"],
                                             "instruction": "make him older", "preset": "tiny"})
        assert edit.status_code == 202
        info = edit.json()
        assert (info["prompt"], info["prior_id"], info["instruction"]) == ("parent", prior_id, "make him older")


def test_landmark_indices_reach_the_prior_builder_as_a_file(tmp_path):
    with make_client(tmp_path, FakeJobs()) as client:
        indices = [i % 4 for i in range(478)]
        info = client.post("/v1/priors", json={**tetrahedron_upload(), "landmark_indices": indices})
        assert info.status_code == 201, info.text
        assert info.json()["landmarks"] == {"status": "found", "count": 478,
                                            "message": "All 478 face landmarks were found."}
        plain = client.post("/v1/priors", json=tetrahedron_upload()).json()
        assert plain["prior_id"] != info.json()["prior_id"]  # the indices are part of the identity
        out_of_range = client.post("/v1/priors", json={**tetrahedron_upload(), "landmark_indices": [4] * 478})
        assert out_of_range.status_code == 422 and "below 4" in out_of_range.json()["detail"]
        too_few = client.post("/v1/priors", json={**tetrahedron_upload(), "landmark_indices": [0] * 477})
        assert too_few.status_code == 422 and "landmark_indices" in too_few.json()["detail"]


def test_jobs_submitted_at_once_are_stamped_in_queue_order(tmp_path):
    """created_at follows the queue (seq) order even when many requests submit at the same moment."""
    store = JobStore(tmp_path)
    barrier = threading.Barrier(8)

    def submit_some(name: str) -> None:
        barrier.wait(30)
        for i in range(10):
            store.submit("generate", {"prompt": f"{name} {i}", "seed": 0, "preset": "tiny", "prior_id": "p"})

    threads = [threading.Thread(target=submit_some, args=(f"client {n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stamps = [job.created_at for job in store.list()]
    assert len(stamps) == 80 and stamps == sorted(stamps)
