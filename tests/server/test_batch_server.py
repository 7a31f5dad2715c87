"""`headsculpt batch --server URL` (issues 18 and 19) against a real engine server with the tiny
models: the variations run as jobs there, with the batch's style LoRAs (one by Hub id, one a file here,
uploaded once) and image prompt (uploaded once), their results land in the batch folder, and a rerun
collects them without submitting anything again."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from headsculpt_engine.batch.attributes import draw
from headsculpt_engine.cli import main
from headsculpt_engine.models.loading import tiny_models_dir
from headsculpt_engine.models.lora import LORA_WEIGHTS
from headsculpt_engine.models.tiny import TINY_LORA_DIR

from .lora_cache import TINY_LORA_ID, tiny_lora_cache

TEMPLATE = "a head of a {age} {person}"
ATTRIBUTES = {"age": ["young", "old"], "person": ["pirate", "knight"]}


@pytest.fixture(scope="module")
def server_lora(tmp_path_factory) -> Path:
    """The tiny LoRA as TINY_LORA_ID in the server's Hugging Face cache (jobs name LoRAs by Hub id)."""
    return tiny_lora_cache(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="module")
def engine_server_env(server_lora) -> dict[str, str]:
    return {"HF_HUB_CACHE": str(server_lora.parents[3])}  # CACHE/models--owner--name/snapshots/REV/file


@pytest.mark.slow
def test_batch_on_a_server_downloads_every_result_and_reruns_nothing(engine_server, server_lora, tmp_path, capsys):
    attributes = tmp_path / "attributes.json"
    attributes.write_text(json.dumps(ATTRIBUTES))
    image = tmp_path / "face.jpg"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    own_lora = tmp_path / "my-style.safetensors"  # an artist's own file: the tiny LoRA's bytes
    own_lora.write_bytes((tiny_models_dir() / TINY_LORA_DIR / LORA_WEIGHTS).read_bytes())
    out = tmp_path / "batch"
    command = ["batch", "--prompt", TEMPLATE, "--attributes", str(attributes), "--count", "2", "--seed", "9",
               "--preset", "tiny", "--out", str(out), "--server", engine_server.url,
               "--token-file", engine_server.handshake["token_file"], "--poll", "0.5",
               "--lora", TINY_LORA_ID, "--lora-scale", "0.8", "--lora", str(own_lora), "--lora-scale", "0.5",
               "--image", str(image), "--image-scale", "0.6"]
    assert main(command) == 0, capsys.readouterr()
    first = capsys.readouterr().out
    assert first.count("submitted as job") == 2 and "Done: 2 of 2" in first
    assert first.count("Uploading the image prompt") == 1 and first.count(f"Uploading the LoRA {own_lora}") == 1
    (stored_image,) = (engine_server.data_dir / "images").iterdir()
    own_sha = hashlib.sha256(own_lora.read_bytes()).hexdigest()
    stored_lora = engine_server.data_dir / "loras" / f"{own_sha}.safetensors"

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
        avatar = json.loads((result / "avatar.json").read_text())
        assert avatar["prompt"] == run["prompt"]
        # Every job ran with the LoRA from the server's cache, the uploaded LoRA file and the one uploaded
        # image, at their scales.
        hub, uploaded = avatar["loras"]
        assert (hub["file"], hub["scale"]) == (str(server_lora), 0.8)
        assert hub["sha256"] == hashlib.sha256(server_lora.read_bytes()).hexdigest()
        assert (uploaded["source"], uploaded["file"], uploaded["scale"]) == (str(stored_lora), str(stored_lora), 0.5)
        assert uploaded["sha256"] == own_sha
        assert avatar["image_prompt"]["sha256"] == stored_image.stem == hashlib.sha256(
            stored_image.read_bytes()).hexdigest()
        assert avatar["config"]["guidance"]["image_scale"] == 0.6

    assert main(command) == 0
    again = capsys.readouterr().out
    assert again.count("already done") == 2 and "submitted" not in again and "Uploading" not in again
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
    assert main(base + ["--lora", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors does not exist: pass a .safetensors file" in capsys.readouterr().err
    pickled = tmp_path / "style.ckpt"
    pickled.write_bytes(b"")
    assert main(base + ["--lora", str(pickled)]) == 2
    assert "is not a .safetensors file" in capsys.readouterr().err
    assert main(base + ["--image", str(tmp_path / "missing.png")]) == 2
    assert "The image prompt" in capsys.readouterr().err
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "Traceback" not in err
    assert not (tmp_path / "batch").exists()
