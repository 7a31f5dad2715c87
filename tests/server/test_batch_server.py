"""`headsculpt batch --server URL` (issues 18 and 19) against a real engine server with the tiny
models: the variations run as jobs there, their results land in the batch folder, and a rerun collects
them without submitting anything again."""
from __future__ import annotations

import json

import pytest

from headsculpt_engine.batch.attributes import draw
from headsculpt_engine.cli import main

TEMPLATE = "a head of a {age} {person}"
ATTRIBUTES = {"age": ["young", "old"], "person": ["pirate", "knight"]}


@pytest.mark.slow
def test_batch_on_a_server_downloads_every_result_and_reruns_nothing(engine_server, tmp_path, capsys):
    attributes = tmp_path / "attributes.json"
    attributes.write_text(json.dumps(ATTRIBUTES))
    out = tmp_path / "batch"
    command = ["batch", "--prompt", TEMPLATE, "--attributes", str(attributes), "--count", "2", "--seed", "9",
               "--preset", "tiny", "--out", str(out), "--server", engine_server.url,
               "--token-file", engine_server.handshake["token_file"], "--poll", "0.5"]
    assert main(command) == 0, capsys.readouterr()
    first = capsys.readouterr().out
    assert first.count("submitted as job") == 2 and "Done: 2 of 2" in first

    manifest = json.loads((out / "batch.json").read_text())
    runs = manifest["runs"]
    assert manifest["server"] == engine_server.url
    assert [run["prompt"] for run in runs] == [v.prompt for v in draw(TEMPLATE, ATTRIBUTES, 2, seed=9)]
    with engine_server.client() as client:
        jobs = {job["job_id"]: job for job in client.get("/v1/jobs").json()["jobs"]}
    assert set(jobs) == {run["job_id"] for run in runs}
    for run in runs:
        job = jobs[run["job_id"]]
        assert run["state"] == "done" and job["state"] == "done"
        assert job["prompt"] == run["prompt"] and job["seed"] == 9 and job["preset"] == "tiny"
        result = out / run["run_folder"] / "result"
        assert (result / "avatar.glb").stat().st_size > 1000
        assert json.loads((result / "avatar.json").read_text())["prompt"] == run["prompt"]

    assert main(command) == 0
    again = capsys.readouterr().out
    assert again.count("already done") == 2 and "submitted" not in again
    with engine_server.client() as client:
        assert len(client.get("/v1/jobs").json()["jobs"]) == 2  # nothing ran twice


def test_batch_server_refusals_are_sentences(tmp_path, capsys, monkeypatch):
    attributes = tmp_path / "attributes.json"
    attributes.write_text(json.dumps(ATTRIBUTES))
    base = ["batch", "--prompt", TEMPLATE, "--attributes", str(attributes), "--count", "2",
            "--out", str(tmp_path / "batch"), "--server", "http://127.0.0.1:9"]
    monkeypatch.delenv("HEADSCULPT_TOKEN", raising=False)
    assert main(base) == 2 and "needs the server's token" in capsys.readouterr().err
    monkeypatch.setenv("HEADSCULPT_TOKEN", "x")
    assert main(base + ["--models", "tiny"]) == 2
    assert "--models apply to generations on this machine" in capsys.readouterr().err
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "Traceback" not in err
    assert not (tmp_path / "batch").exists()
