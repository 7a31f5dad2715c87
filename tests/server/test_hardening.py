"""Issue 17, one test (or more) per defect found by probing the server: one server per data folder,
no stall during a large upload, nothing written outside --data, no leftover staging, no symlinked
downloads, and the smaller ones (parse failures, strict types, absurd coordinates, re-upload names,
the restart message, the Host header, file modes, query strings in the access log)."""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import trimesh
from fastapi.testclient import TestClient

from headsculpt_engine.errors import InputError
from headsculpt_engine.server.app import create_app
from headsculpt_engine.server.files import regular_file
from headsculpt_engine.server.priors import MAX_FACES, BuiltPrior
from headsculpt_engine.server.runner import ServerOptions
from headsculpt_engine.server.store import STOPPED_MESSAGE, JobStore

from .engine_server import EngineServer, wait_for
from .test_jobs_e2e import prior_upload
from .test_queue import TOKEN, FakeJobs, fake_build, make_client, submit, tetrahedron_upload


def mesh_body(vertices: np.ndarray, faces: np.ndarray, name: str = "mesh") -> dict:
    return {"name": name, "vertex_count": len(vertices), "face_count": len(faces),
            "vertices_b64": base64.b64encode(np.asarray(vertices, "<f4").tobytes()).decode(),
            "faces_b64": base64.b64encode(np.asarray(faces, "<i4").tobytes()).decode()}


def sized_build(vertices, faces, landmark_file, out_dir: Path, **_) -> BuiltPrior:
    """A prior of a known size on disk: 100 KB."""
    out_dir.mkdir(parents=True)
    (out_dir / "payload.bin").write_bytes(b"\0" * 100_000)
    return BuiltPrior(is_flame=False, landmark_count=0)


def refusing_build(vertices, faces, landmark_file, out_dir: Path, **_) -> BuiltPrior:
    """Writes part of a prior, then refuses the mesh, as the real builder may after caching."""
    out_dir.mkdir(parents=True)
    (out_dir / "mesh.npz").write_bytes(b"partial")
    raise InputError("This mesh is refused for the test.")


def greedy_build(vertices, faces, landmark_file, out_dir: Path, **_) -> BuiltPrior:
    np.ones(2**28)  # 2 GiB, far over the test's memory cap
    raise AssertionError("the memory cap did not hold")


def slow_build(vertices, faces, landmark_file, out_dir: Path, **_) -> BuiltPrior:
    time.sleep(60)
    raise AssertionError("the time limit did not hold")


def tet_at(offset: float, name: str = "tet") -> dict:
    body = tetrahedron_upload()
    vertices = np.frombuffer(base64.b64decode(body["vertices_b64"]), "<f4").reshape(4, 3) + offset
    return {**body, "name": name, "vertices_b64": base64.b64encode(vertices.astype("<f4").tobytes()).decode()}


def entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


# --- 1. one server per data folder ------------------------------------------------------------------


def test_a_second_server_on_the_same_data_folder_refuses_to_start(tmp_path):
    data = tmp_path / "data"
    first = EngineServer(data).start()
    try:
        second = subprocess.run([sys.executable, "-m", "headsculpt_engine", "serve", "--data", str(data),
                                 "--models", "tiny"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"PID {first.proc.pid}" in second.stderr and first.url in second.stderr
        assert "Traceback" not in second.stderr
        assert json.loads((data / "server.json").read_text())["pid"] == first.proc.pid
        with first.client() as client:
            assert client.get("/v1/jobs").status_code == 200
    finally:
        first.kill()  # SIGKILL: the OS drops the lock with the process, so a restart is not blocked
    restarted = EngineServer(data).start()
    restarted.stop()


# --- 2. no stall during a limit-sized upload ---------------------------------------------------------


def limit_sized_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A closed grid surface of exactly MAX_FACES triangles (a torus of 1000 x 1000 quads)."""
    n = 1000
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, n, endpoint=False), np.linspace(0, 2 * np.pi, n, endpoint=False))
    vertices = np.stack([(0.2 + 0.05 * np.cos(v)) * np.cos(u), 0.05 * np.sin(v),
                         (0.2 + 0.05 * np.cos(v)) * np.sin(u)], axis=-1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n), np.arange(n))
    a, b, c, d = j * n + i, j * n + (i + 1) % n, ((j + 1) % n) * n + i, ((j + 1) % n) * n + (i + 1) % n
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    assert len(faces) == MAX_FACES
    return vertices, faces


def test_the_api_keeps_answering_during_a_limit_sized_upload(tmp_path):
    upload_body = mesh_body(*limit_sized_mesh(), name="two million faces")
    # Landmark indices skip detection, so the build goes on to the signed-distance grid (one long
    # native call that holds the interpreter lock: minutes for two million faces on a CPU).
    upload_body["landmark_indices"] = list(range(478))
    body = json.dumps(upload_body).encode()
    assert len(body) > 40 * 1024 * 1024
    with EngineServer(tmp_path / "data", extra_args=("--upload-timeout", "15")) as server:
        with server.client(timeout=120) as client:
            assert client.get("/v1/health").status_code == 200  # torch imported: the server is idle
        outcome: dict = {}

        def upload() -> None:
            with server.client(timeout=600) as client:
                outcome["response"] = client.post("/v1/priors", content=body,
                                                  headers={"Content-Type": "application/json"})

        uploader = threading.Thread(target=upload, daemon=True)
        uploader.start()
        answer_times = []
        deadline = time.monotonic() + 40
        with server.client(timeout=10) as client:
            while uploader.is_alive() and time.monotonic() < deadline:
                start = time.monotonic()
                assert client.get("/v1/jobs").status_code == 200
                answer_times.append(time.monotonic() - start)
                assert answer_times[-1] < 1.0, answer_times
                time.sleep(0.2)
        uploader.join(60)
        print(f"{len(answer_times)} answers during the upload, slowest {max(answer_times):.3f} s")
        assert len(answer_times) >= 20
        response = outcome["response"]
        assert response.status_code in (201, 422), response.text
        if response.status_code == 422:  # the time limit stopped the build (a fast machine may finish)
            assert "--upload-timeout" in response.json()["detail"]
        assert [name for name in entries(server.data_dir / "priors") if name.startswith(".")] == []


def test_an_upload_is_bounded_in_time_and_memory(tmp_path):
    app = create_app(ServerOptions(data_dir=tmp_path / "slow", upload_timeout_s=2.0), TOKEN,
                     run_job=FakeJobs(), build_prior=slow_build)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        start = time.monotonic()
        response = client.post("/v1/priors", json=tetrahedron_upload())
        assert response.status_code == 422 and "longer than 2 s" in response.json()["detail"]
        assert time.monotonic() - start < 30
    app = create_app(ServerOptions(data_dir=tmp_path / "greedy", upload_memory_bytes=1024**3), TOKEN,
                     run_job=FakeJobs(), build_prior=greedy_build)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        response = client.post("/v1/priors", json=tetrahedron_upload())
        assert response.status_code == 413 and "more memory" in response.json()["detail"]
        assert client.get("/v1/health").status_code == 200
    assert entries(tmp_path / "greedy" / "priors") == entries(tmp_path / "slow" / "priors") == []


# --- 3. the prior cache lives in the data folder -----------------------------------------------------


def test_uploads_write_nothing_outside_the_data_folder(tmp_path):
    outside = {"HEADSCULPT_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path / "home")}
    with EngineServer(tmp_path / "data", env=outside) as server, server.client(timeout=300) as client:
        # A sphere has no face for the landmark detector: refused after the prior loader cached it.
        sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
        refused = client.post("/v1/priors", json=mesh_body(sphere.vertices, sphere.faces))
        assert refused.status_code == 422 and "no face" in refused.json()["detail"], refused.text
        # Landmark indices given: the loader still caches the mesh and builds the grid, skips detection.
        accepted = client.post("/v1/priors", json={**prior_upload(), "landmark_indices": list(range(478))})
        assert accepted.status_code == 201, accepted.text
        prior_id = accepted.json()["prior_id"]
        assert entries(server.data_dir / "priors") == [prior_id]
        assert {"info.json", "prior"} <= set(entries(server.data_dir / "priors" / prior_id))
        # (Libraries keep their own caches, e.g. matplotlib's font list under HOME: not the engine's.)
        assert not (tmp_path / "cache" / "priors").exists()
        assert not (tmp_path / "home" / ".cache" / "headsculpt").exists()
        assert client.delete(f"/v1/priors/{prior_id}").status_code == 204
        assert client.get(f"/v1/priors/{prior_id}").status_code == 404
        assert entries(server.data_dir / "priors") == []


def test_a_refused_upload_leaves_nothing(tmp_path):
    app = create_app(ServerOptions(data_dir=tmp_path), TOKEN, run_job=FakeJobs(), build_prior=refusing_build)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        response = client.post("/v1/priors", json=tetrahedron_upload())
        assert response.status_code == 422 and response.json()["detail"] == "This mesh is refused for the test."
    assert entries(tmp_path / "priors") == []


def test_delete_a_prior_unless_a_queued_job_needs_it(tmp_path):
    jobs = FakeJobs(steps=400, step_s=0.05)
    with make_client(tmp_path, jobs) as client:
        prior_id = client.post("/v1/priors", json=tetrahedron_upload()).json()["prior_id"]
        job = submit(client, prior_id, "a head")
        response = client.delete(f"/v1/priors/{prior_id}")
        assert response.status_code == 409 and "jobs use this prior" in response.json()["detail"]
        client.post(f"/v1/jobs/{job['job_id']}/cancel")
        wait_for(client, job["job_id"], ("cancelled",), timeout_s=60)
        assert client.delete(f"/v1/priors/{prior_id}").status_code == 204
        assert client.get(f"/v1/priors/{prior_id}").status_code == 404
        assert client.delete(f"/v1/priors/{prior_id}").status_code == 404
        assert entries(tmp_path / "priors") == []


def test_the_least_recently_used_priors_go_beyond_the_size_cap(tmp_path):
    app = create_app(ServerOptions(data_dir=tmp_path, prior_cache_bytes=250_000), TOKEN, run_job=FakeJobs(),
                     build_prior=sized_build)  # each prior ~100 KB: two fit
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        ids = []
        for offset in (0.0, 1.0):
            ids.append(client.post("/v1/priors", json=tet_at(offset)).json()["prior_id"])
            time.sleep(0.05)
        assert client.post("/v1/priors", json=tet_at(0.0)).status_code == 201  # the first is used again
        time.sleep(0.05)
        ids.append(client.post("/v1/priors", json=tet_at(2.0)).json()["prior_id"])
        kept = [client.get(f"/v1/priors/{prior_id}").status_code for prior_id in ids]
        assert kept == [200, 404, 200]  # the second was least recently used
        assert sorted(entries(tmp_path / "priors")) == sorted([ids[0], ids[2]])


# --- 4. staging left by a crash -----------------------------------------------------------------------


def test_staging_folders_left_by_a_crash_are_removed_at_start(tmp_path):
    leftover = tmp_path / "priors" / ".staging-0123abcd"
    (leftover / "prior").mkdir(parents=True)
    (leftover / "upload.json").write_bytes(b"{}" * 1000)
    with make_client(tmp_path, FakeJobs()) as client:
        assert client.get("/v1/jobs").status_code == 200
    assert entries(tmp_path / "priors") == []


# --- 5. downloads never follow links -------------------------------------------------------------------


def test_a_result_replaced_by_a_link_is_not_served(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the client")
    with make_client(tmp_path / "data", FakeJobs(steps=2, step_s=0.0)) as client:
        prior_id = client.post("/v1/priors", json=tetrahedron_upload()).json()["prior_id"]
        job_id = submit(client, prior_id, "a head")["job_id"]
        job = wait_for(client, job_id, ("done",), timeout_s=60)
        assert job["result_files"] == ["avatar.glb"] and job["has_preview"]
        run_dir = tmp_path / "data" / "jobs" / job_id
        (run_dir / "result" / "avatar.glb").unlink()
        (run_dir / "result" / "avatar.glb").symlink_to(secret)
        (run_dir / "result" / "avatar.json").symlink_to(secret)
        preview = run_dir / "previews" / "0001.png"
        preview.unlink()
        preview.symlink_to(secret)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["result_files"] == [] and not job["has_preview"]
        for name in ("avatar.glb", "avatar.json"):
            response = client.get(f"/v1/jobs/{job_id}/result/{name}")
            assert response.status_code == 404 and "not for the client" not in response.text
        assert client.get(f"/v1/jobs/{job_id}/preview").status_code == 404


def test_regular_file_refuses_links_escapes_and_non_files(tmp_path):
    (tmp_path / "job" / "result").mkdir(parents=True)
    (tmp_path / "job" / "result" / "a.glb").write_bytes(b"x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "b.glb").write_bytes(b"y")
    (tmp_path / "job" / "linked").symlink_to(tmp_path / "outside")
    assert regular_file(tmp_path / "job", "result/a.glb") == tmp_path / "job" / "result" / "a.glb"
    for relative in ("linked/b.glb", "../outside/b.glb", str(tmp_path / "outside" / "b.glb"), "result",
                     "result/missing.glb", ""):
        assert regular_file(tmp_path / "job", relative) is None, relative


# --- 6. the smaller ones -------------------------------------------------------------------------------


GENERATE = {"kind": "generate", "prior_id": "0" * 24, "prompt": "a DSLR portrait of a man", "preset": "tiny"}


@pytest.mark.parametrize("route", ["/v1/priors", "/v1/jobs"])
@pytest.mark.parametrize("body", [b'{"name": "\xff\xfe"}', b"[" * 100_000 + b"]" * 100_000,
                                  b'{"vertex_count": ' + b"9" * 5000 + b"}"], ids=["utf8", "deep", "digits"])
def test_every_parse_failure_is_a_documented_4xx_sentence(tmp_path, route, body):
    with make_client(tmp_path, FakeJobs()) as client:
        response = client.post(route, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith("The request body is not valid JSON") and detail.endswith(".")
        assert "422" in client.get("/openapi.json").json()["paths"][route]["post"]["responses"]


def test_booleans_are_not_integers(tmp_path):
    with make_client(tmp_path, FakeJobs()) as client:
        response = client.post("/v1/jobs", json={**GENERATE, "seed": True})
        assert response.status_code == 422 and "seed" in response.json()["detail"]
        upload = {**tetrahedron_upload(), "vertex_count": True}
        assert client.post("/v1/priors", json=upload).status_code == 422


def test_absurd_coordinates_get_the_right_sentence(tmp_path):
    vertices = np.array([[0, 0, 0], [3e38, 0, 0], [0, -3e38, 0], [0, 0, 3e38]])
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    with make_client(tmp_path, FakeJobs()) as client:
        response = client.post("/v1/priors", json=mesh_body(vertices, faces))
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert "3e+38" in detail and "metres" in detail and "usable faces" not in detail


def test_a_re_upload_under_a_new_name_gets_that_name(tmp_path):
    with make_client(tmp_path, FakeJobs()) as client:
        first = client.post("/v1/priors", json=tet_at(0.0, name="Head A")).json()
        again = client.post("/v1/priors", json=tet_at(0.0, name="Head B"))
        assert again.status_code == 201
        assert again.json()["prior_id"] == first["prior_id"] and again.json()["name"] == "Head B"
        assert client.get(f"/v1/priors/{first['prior_id']}").json()["name"] == "Head B"


def test_the_restart_message_stays_in_the_job_history(tmp_path):
    store = JobStore(tmp_path)
    job = store.submit("generate", {**GENERATE, "seed": 0})
    assert store.claim(job.job_id)
    restarted = JobStore(tmp_path)  # as after a kill: the job was left running
    assert restarted.requeue_interrupted() == 1
    assert restarted.claim(job.job_id)
    running = restarted.get(job.job_id)
    assert running.state == "running" and running.message == STOPPED_MESSAGE
    restarted.finish(job.job_id, "done")
    done = restarted.get(job.job_id)
    assert done.message == "" and [message for _, message in done.history] == [STOPPED_MESSAGE]
    with make_client(tmp_path, FakeJobs()) as client:
        history = client.get(f"/v1/jobs/{job.job_id}").json()["history"]
        assert [event["message"] for event in history] == [STOPPED_MESSAGE]


@pytest.fixture(scope="module")
def umask_server(tmp_path_factory):
    """A real server started under umask 000, its log kept for the access-log check."""
    server = EngineServer(tmp_path_factory.mktemp("umask") / "data", umask=0)
    try:
        yield server.start()
    finally:
        server.stop()


def test_host_header_must_name_the_loopback_server(umask_server):
    port = umask_server.handshake["port"]
    with umask_server.client() as client:
        # Another port is fine: an SSH tunnel may forward a different local port.
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]:9000", "localhost"):
            assert client.get("/v1/jobs", headers={"Host": host}).status_code == 200, host
        for host in (f"rebind.example:{port}", f"localhost.rebind.example:{port}", "127.0.0.1.example"):
            response = client.get("/v1/health", headers={"Host": host})
            assert response.status_code == 421 and "Host header" in response.json()["detail"], host


def test_data_folder_and_files_are_owner_only_whatever_the_umask(umask_server):
    # The server sets its own umask, so what it writes later (priors, jobs, results) is covered too.
    with umask_server.client() as client:
        assert client.post("/v1/priors", json=tetrahedron_upload()).status_code == 422
    data = umask_server.data_dir
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    for path in data.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(os.lstat(path).st_mode) == expected, path
    assert {"server.json", "token", "jobs.sqlite3", "priors"} <= set(entries(data))


def test_access_log_has_no_query_strings(umask_server):
    with umask_server.client() as client:
        assert client.get("/v1/jobs", params={"token": "secret-in-the-query"}).status_code == 200
    log = ""
    for _ in range(50):  # the access line is written after the answer
        log = umask_server.log()
        if '"GET /v1/jobs HTTP/1.1" 200' in log:
            break
        time.sleep(0.1)
    assert '"GET /v1/jobs HTTP/1.1" 200' in log
    assert "secret-in-the-query" not in log
