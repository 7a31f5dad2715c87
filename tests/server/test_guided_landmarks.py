"""Issue 14 on the server: a prior uploaded with keypoints gets guided landmarks (bad keypoints: a 422
sentence and nothing stored); a prior uploaded without detection serves only jobs with "landmarks": "none"."""
from __future__ import annotations

import base64
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import trimesh
from fastapi.testclient import TestClient

from headsculpt_engine.prior.keypoints import KEYPOINTS, template_landmarks
from headsculpt_engine.prior.assets import builtin_mesh_path
from headsculpt_engine.server.app import create_app
from headsculpt_engine.server.priors import build_engine_prior
from headsculpt_engine.server.runner import ServerOptions, job_config

from .test_queue import TOKEN, FakeJobs, wait_state


QUICK_BUILD = functools.partial(build_engine_prior, sdf_resolution=16)


@pytest.fixture(scope="module")
def head():
    """The built-in head turned to face +X (keypoints need no detection, so no orientation either) and
    its keypoints in that frame."""
    mesh = trimesh.load(str(builtin_mesh_path()), process=False, force="mesh")
    turn = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    vertices = np.asarray(mesh.vertices) @ turn.T
    keypoints = {name: (template_landmarks()[index] @ turn.T).tolist() for name, index in KEYPOINTS.items()}
    return vertices.astype("<f4"), np.asarray(mesh.faces, "<i4"), keypoints


def body(vertices, faces, **extra) -> dict:
    return {"name": "head", "vertex_count": len(vertices), "face_count": len(faces),
            "vertices_b64": base64.b64encode(vertices.tobytes()).decode(),
            "faces_b64": base64.b64encode(faces.tobytes()).decode(), **extra}


@pytest.fixture()
def client(tmp_path):
    jobs = FakeJobs()
    app = create_app(ServerOptions(data_dir=tmp_path), TOKEN, run_job=jobs, build_prior=QUICK_BUILD)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as test_client:
        test_client.jobs = jobs
        yield test_client


def stored(data: Path) -> list[str]:
    """The priors kept in the data folder (staging folders left out)."""
    return sorted(p.name for p in (data / "priors").iterdir() if not p.name.startswith("."))


def test_keypoints_give_the_uploaded_prior_guided_landmarks(client, head, tmp_path):
    vertices, faces, keypoints = head
    response = client.post("/v1/priors", json=body(vertices, faces, keypoints=keypoints))
    assert response.status_code == 201, response.text
    assert response.json()["landmarks"]["status"] == "found" and response.json()["landmarks"]["count"] == 478
    plain_id = client.post("/v1/priors", json=body(vertices, faces, detect_landmarks=False)).json()["prior_id"]
    assert plain_id != response.json()["prior_id"]  # keypoints are part of the prior's identity
    sheet = client.get(f"/v1/priors/{response.json()['prior_id']}/landmark-preview")
    assert sheet.status_code == 200 and sheet.content[:4] == b"\x89PNG"


@pytest.mark.parametrize("change,words", [
    (lambda k: {n: p for n, p in k.items() if n != "chin"}, "missing chin"),
    (lambda k: {**k, "nose_tip": [math.nan, 0.0, 0.0]}, "not a finite number"),
    (lambda k: {**k, "chin": [p + 0.5 for p in k["chin"]]}, "away from the mesh surface"),
], ids=["missing", "nan", "far"])
def test_bad_keypoints_are_refused_with_a_sentence_and_nothing_is_stored(client, head, tmp_path, change, words):
    vertices, faces, keypoints = head
    # json.dumps writes NaN as the bare word NaN, as some clients do.
    response = client.post("/v1/priors", content=json.dumps(body(vertices, faces, keypoints=change(keypoints))),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert stored(tmp_path) == []


def test_a_prior_without_landmarks_serves_only_jobs_without_landmark_control(client, head, tmp_path):
    vertices, faces, _ = head
    info = client.post("/v1/priors", json=body(vertices, faces, detect_landmarks=False))
    assert info.status_code == 201, info.text
    landmarks = info.json()["landmarks"]
    assert landmarks["status"] == "missing" and "left out on request" in landmarks["message"]
    assert info.json()["landmarks_requested"] is False
    job = {"kind": "generate", "prior_id": info.json()["prior_id"], "prompt": "a monkey", "preset": "tiny"}
    refused = client.post("/v1/jobs", json=job)
    assert refused.status_code == 422 and "no face landmarks" in refused.json()["detail"], refused.text
    accepted = client.post("/v1/jobs", json={**job, "landmarks": "none"})
    assert accepted.status_code == 202, accepted.text
    wait_state(client, accepted.json()["job_id"], ("done",))
    request = {**job, "landmarks": "none", "seed": 0}
    assert job_config(request, ServerOptions(data_dir=tmp_path)).guidance.landmarks == "none"
    assert job_config({**request, "landmarks": "prior"}, ServerOptions(data_dir=tmp_path)).guidance.landmarks == "prior"
