"""Acceptance 1, 2, 3 and 6: real server processes running the real pipeline with the tiny models
on loopback. Generate and download, cancel, SIGKILL and resume, SIGTERM and resume, two clients."""
from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from headsculpt_engine.server.store import JobStore

from .engine_server import EngineServer, wait_for

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_PRIOR = ROOT / "flame_assets" / "base_head.obj"
JOB_TIMEOUT_S = 600.0  # tiny runs take seconds to a minute; a loaded 2-core machine gets slack


def prior_upload() -> dict:
    mesh = trimesh.load(BUILTIN_PRIOR, process=False, force="mesh")
    vertices = np.asarray(mesh.vertices, "<f4")
    faces = np.asarray(mesh.faces, "<i4")
    return {"name": "built-in head", "vertex_count": len(vertices), "face_count": len(faces),
            "vertices_b64": base64.b64encode(vertices.tobytes()).decode(),
            "faces_b64": base64.b64encode(faces.tobytes()).decode()}


def upload(client) -> str:
    response = client.post("/v1/priors", json=prior_upload(), timeout=300)
    assert response.status_code == 201, response.text
    return response.json()["prior_id"]


def submit(client, prior_id: str, prompt: str, preset: str = "tiny") -> dict:
    response = client.post("/v1/jobs", json={"kind": "generate", "prior_id": prior_id, "prompt": prompt,
                                             "preset": preset, "seed": 1})
    assert response.status_code == 202, response.text
    return response.json()


def checkpoint_iteration(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["iteration"])


@pytest.fixture(scope="module")
def prior_id(engine_server) -> str:
    with engine_server.client() as client:
        return upload(client)


def test_generate_then_download_a_glb_that_loads_and_edit_it(engine_server, prior_id, tmp_path):
    with engine_server.client() as client:
        info = client.get(f"/v1/priors/{prior_id}").json()
        assert info["vertex_count"] > 100 and info["landmarks"]["status"] in ("found", "missing")
        sheet = client.get(f"/v1/priors/{prior_id}/landmark-preview", timeout=300)
        assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/png"
        image = np.asarray(Image.open(io.BytesIO(sheet.content)).convert("RGB"))
        assert image.shape[1] > 3 * image.shape[0] and image.std() > 5  # four views side by side, not blank

        job = submit(client, prior_id, "a DSLR portrait of an old sailor")
        assert job["state"] in ("queued", "running") and job["prompt"] == "a DSLR portrait of an old sailor"
        done = wait_for(client, job["job_id"], ("done", "failed", "cancelled"), JOB_TIMEOUT_S)
        assert done["state"] == "done", done["message"]
        assert done["iteration"] == done["total"] > 0 and done["eta_s"] is None
        assert "avatar.glb" in done["result_files"] and "avatar.json" in done["result_files"]
        glb = client.get(f"/v1/jobs/{job['job_id']}/result/avatar.glb")
        assert glb.status_code == 200 and glb.content[:4] == b"glTF"
        (tmp_path / "avatar.glb").write_bytes(glb.content)
        scene = trimesh.load(tmp_path / "avatar.glb", force="scene")
        meshes = list(scene.geometry.values())
        assert meshes and sum(len(m.faces) for m in meshes) > 100
        assert done["has_preview"]
        preview = client.get(f"/v1/jobs/{job['job_id']}/preview")
        assert Image.open(io.BytesIO(preview.content)).format == "PNG"

        # An edit of the finished avatar: same prompt and prior, the instruction on top.
        edit = client.post("/v1/jobs", json={"kind": "edit", "parent_job_id": job["job_id"],
                                             "instruction": "make him older", "preset": "tiny"})
        assert edit.status_code == 202, edit.text
        assert (edit.json()["prompt"], edit.json()["prior_id"]) == (done["prompt"], prior_id)
        edited = wait_for(client, edit.json()["job_id"], ("done", "failed", "cancelled"), JOB_TIMEOUT_S)
        assert edited["state"] == "done", edited["message"]
        assert edited["stage"] == "edit" and "avatar.glb" in edited["result_files"]
        glb = client.get(f"/v1/jobs/{edited['job_id']}/result/avatar.glb")
        (tmp_path / "edited.glb").write_bytes(glb.content)
        assert len(trimesh.load(tmp_path / "edited.glb", force="scene").geometry) >= 1


def test_two_clients_submitting_at_once_both_get_their_jobs_done_in_order(engine_server, prior_id):
    barrier = threading.Barrier(2)
    submitted: dict[str, dict] = {}

    def client_thread(name: str) -> None:
        with engine_server.client() as client:
            barrier.wait(30)
            submitted[name] = submit(client, prior_id, f"a portrait of {name}")

    threads = [threading.Thread(target=client_thread, args=(name,)) for name in ("ada", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert set(submitted) == {"ada", "bob"}
    with engine_server.client() as client:
        finished = {name: wait_for(client, job["job_id"], ("done", "failed"), 2 * JOB_TIMEOUT_S)
                    for name, job in submitted.items()}
        assert all(job["state"] == "done" for job in finished.values()), finished
        order = [job["job_id"] for job in client.get("/v1/jobs").json()["jobs"]]
    first, second = sorted(finished.values(), key=lambda job: order.index(job["job_id"]))
    assert first["created_at"] <= second["created_at"]
    assert first["updated_at"] < second["updated_at"]  # one worker: the earlier one finished first


def test_cancel_a_running_job_keeps_its_checkpoint(engine_server, prior_id):
    with engine_server.client() as client:
        job = submit(client, prior_id, "a bust of a Roman emperor")
        running = wait_for(client, job["job_id"], ("running",), JOB_TIMEOUT_S,
                           predicate=lambda j: j["stage"] == "coarse" and j["iteration"] >= 1)
        cancelled = client.post(f"/v1/jobs/{job['job_id']}/cancel").json()
        assert cancelled["state"] in ("running", "cancelled")
        final = wait_for(client, job["job_id"], ("cancelled", "done", "failed"), JOB_TIMEOUT_S)
        assert final["state"] == "cancelled", final
        assert "checkpoint" in final["message"]
        checkpoint = engine_server.data_dir / "jobs" / job["job_id"] / "coarse" / "checkpoint.pt"
        assert checkpoint_iteration(checkpoint) >= running["iteration"]
        assert final["result_files"] == []
        assert client.delete(f"/v1/jobs/{job['job_id']}").status_code == 204


def test_sigkill_then_sigterm_during_jobs_resume_from_checkpoints(tmp_path):
    data = tmp_path / "data"
    first = EngineServer(data)
    try:
        first.start()
        with first.client() as client:
            prior = upload(client)
            killed = submit(client, prior, "a clay bust of a pirate")
            queued = submit(client, prior, "a marble bust of a queen")
        run_dir = data / "jobs" / killed["job_id"]
        wait_for_file(first, run_dir / "coarse" / "checkpoint.pt")
        first.kill()
    finally:
        first.stop()
    store = JobStore(data)
    assert store.get(killed["job_id"]).state == "running"  # as the kill left it
    assert store.get(queued["job_id"]).state == "queued"
    stage = "fine" if (run_dir / "fine" / "checkpoint.pt").exists() else "coarse"
    kept = checkpoint_iteration(run_dir / stage / "checkpoint.pt")
    assert kept > 0

    second = EngineServer(data)
    try:
        second.start()
        with second.client() as client:
            done = wait_for(client, killed["job_id"], ("done", "failed"), JOB_TIMEOUT_S)
            assert done["state"] == "done", done["message"]
            assert f"{killed['job_id']}: {stage} resuming at iteration {kept} of" in second.log()
            # SIGTERM while the queued job runs: it checkpoints, stays queued, the server exits cleanly.
            wait_for_file(second, data / "jobs" / queued["job_id"] / "coarse" / "checkpoint.pt")
        assert second.stop() == 0
        assert not (data / "server.json").exists()
    finally:
        second.stop()
    interrupted = store.get(queued["job_id"])
    assert interrupted.state == "queued" and "resumes" in interrupted.message

    third = EngineServer(data)
    try:
        third.start()
        with third.client() as client:
            done = wait_for(client, queued["job_id"], ("done", "failed"), JOB_TIMEOUT_S)
            assert done["state"] == "done", done["message"]
            assert [job["state"] for job in client.get("/v1/jobs").json()["jobs"]] == ["done", "done"]
        assert f"{queued['job_id']}: coarse resuming at iteration" in third.log() or \
            f"{queued['job_id']}: fine resuming at iteration" in third.log()
    finally:
        third.stop()


def wait_for_file(server: EngineServer, path: Path, timeout_s: float = JOB_TIMEOUT_S) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert server.proc.poll() is None, server.log()
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout_s} s"
        time.sleep(0.05)
