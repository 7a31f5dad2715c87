"""Issue 18 on the server: image prompts uploaded (never a client path), LoRAs by Hub id from the model
cache only, both reaching the job's run configuration; bad input refused with a sentence."""
from __future__ import annotations

import base64
import hashlib
import io

import huggingface_hub.constants
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from headsculpt_engine.server.app import create_app
from headsculpt_engine.server.runner import ServerOptions, job_config
from headsculpt_engine.server.schemas import GenerateRequest

from .lora_cache import tiny_lora_cache

TOKEN = "styles-test-token"


@pytest.fixture()
def client(tmp_path):
    app = create_app(ServerOptions(data_dir=tmp_path / "data"), TOKEN, run_job=lambda *args: None)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as test_client:
        yield test_client


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding the tiny LoRA as the repository `styles/tiny-cartoon`."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tiny_lora_cache(tmp_path / "hub")


def png_b64(colour=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def generate_request(**styles) -> dict:
    return {"kind": "generate", "prior_id": "p1", "prompt": "a clown", "preset": "tiny", **styles}


def stored_request(**styles) -> dict:
    """The request as the job store keeps it (validated, then dumped) for the runner."""
    return GenerateRequest.model_validate(generate_request(**styles)).model_dump()


def test_an_uploaded_image_is_stored_as_png_in_the_data_folder_and_reaches_the_job_config(client, tmp_path):
    answer = client.post("/v1/images", json={"data_b64": png_b64()})
    assert answer.status_code == 201, answer.text
    info = answer.json()
    stored = tmp_path / "data" / "images" / f"{info['image_id']}.png"
    assert (info["width"], info["height"]) == (40, 30)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == info["image_id"]
    assert Image.open(stored).format == "PNG"
    cfg = job_config(stored_request(image_id=info["image_id"], image_scale=0.6),
                     ServerOptions(data_dir=tmp_path / "data"))
    assert (cfg.guidance.image, cfg.guidance.image_scale) == (str(stored), 0.6)


@pytest.mark.parametrize("body", [{"data_b64": base64.b64encode(b"not an image").decode()},
                                  {"data_b64": "%%% not base64"}, {"path": "/etc/passwd"}])
def test_a_bad_image_upload_gets_a_sentence_and_nothing_is_stored(client, tmp_path, body):
    answer = client.post("/v1/images", json=body)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail.endswith(".") and "Traceback" not in detail
    assert not any((tmp_path / "data" / "images").glob("*"))


def test_jobs_name_images_by_upload_and_loras_by_cached_hub_id_only(client, tmp_path, hub_cache):
    unknown = client.post("/v1/jobs", json=generate_request(image_id="a" * 64))
    assert unknown.status_code == 422 and "upload the image first" in unknown.json()["detail"]
    missing = client.post("/v1/jobs", json=generate_request(loras=[{"id": "styles/not-cached"}]))
    assert missing.status_code == 422 and "is not in the local Hugging Face cache" in missing.json()["detail"]
    for path in ("/etc/passwd", "../../lora.safetensors", str(hub_cache)):
        refused = client.post("/v1/jobs", json=generate_request(loras=[{"id": path}]))
        assert refused.status_code == 422, path
    cfg = job_config(stored_request(loras=[{"id": "styles/tiny-cartoon", "scale": 0.8}]),
                     ServerOptions(data_dir=tmp_path / "data"))
    assert cfg.models.loras == (str(hub_cache),) and cfg.models.lora_scales == (0.8,)
