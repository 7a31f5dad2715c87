"""Issue 18 on the server: image prompts uploaded (never a client path), LoRAs by Hub id from the model
cache only or uploaded as files, all reaching the job's run configuration (an edit's inherited from its
parent); bad input refused with a sentence."""
from __future__ import annotations

import base64
import hashlib
import io
import time

import huggingface_hub.constants
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.numpy import save as save_safetensors

from headsculpt_engine.models.loading import tiny_models_dir
from headsculpt_engine.models.lora import LORA_WEIGHTS
from headsculpt_engine.models.tiny import TINY_LORA_DIR
from headsculpt_engine.server.app import create_app
from headsculpt_engine.server.runner import ServerOptions, edit_request, job_config
from headsculpt_engine.server.schemas import EditRequest, GenerateRequest
from headsculpt_engine.server.store import JobStore

from .lora_cache import tiny_lora_cache

TOKEN = "styles-test-token"


def engine_client(options: ServerOptions):
    app = create_app(options, TOKEN, run_job=lambda *args: None)
    return TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture()
def client(tmp_path):
    with engine_client(ServerOptions(data_dir=tmp_path / "data")) as client:
        yield client


@pytest.fixture(scope="module")
def tiny_lora() -> bytes:
    """The tiny LoRA's file, as an artist's own .safetensors would be uploaded."""
    return (tiny_models_dir() / TINY_LORA_DIR / LORA_WEIGHTS).read_bytes()


def upload_lora(client, data) -> dict:
    answer = client.post("/v1/loras", content=data, headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 201, answer.text
    return answer.json()


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


def test_an_uploaded_cut_out_is_stored_on_white_as_a_local_image_prompt_is_read(client, tmp_path):
    pixels = np.zeros((8, 8, 4), np.uint8)
    pixels[:, :4], pixels[:, 4:] = (0, 0, 255, 255), (255, 0, 0, 0)  # blue, then transparent red
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    answer = client.post("/v1/images", json={"data_b64": base64.b64encode(buffer.getvalue()).decode()})
    assert answer.status_code == 201, answer.text
    stored = np.asarray(Image.open(tmp_path / "data" / "images" / f"{answer.json()['image_id']}.png"))
    assert stored.shape == (8, 8, 3) and (stored[:, :4] == (0, 0, 255)).all() and (stored[:, 4:] == 255).all()


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


def test_an_uploaded_lora_is_stored_once_by_sha256_and_jobs_name_it(client, tmp_path, tiny_lora):
    sha = hashlib.sha256(tiny_lora).hexdigest()
    first = upload_lora(client, tiny_lora)
    assert first == {"lora_id": f"upload:{sha}", "size": len(tiny_lora)}
    assert upload_lora(client, tiny_lora) == first  # the same bytes again: the same file
    stored = tmp_path / "data" / "loras" / f"{sha}.safetensors"
    assert [path.name for path in (tmp_path / "data" / "loras").iterdir()] == [stored.name]
    assert stored.read_bytes() == tiny_lora

    unknown = client.post("/v1/jobs", json=generate_request(loras=[{"id": "upload:" + "0" * 64}]))
    assert unknown.status_code == 422 and "upload the file first (POST /v1/loras)" in unknown.json()["detail"]
    cfg = job_config(stored_request(loras=[{"id": first["lora_id"], "scale": 0.5}]),
                     ServerOptions(data_dir=tmp_path / "data"))
    assert cfg.models.loras == (str(stored),) and cfg.models.lora_scales == (0.5,)


@pytest.mark.parametrize("body, sentence", [
    (b"\x80\x04 a pickled state dict", "is not a safetensors file"),
    (b"", "is not a safetensors file"),
    (save_safetensors({"conv_in.weight": np.zeros((4, 4), np.float32)}), "holds no LoRA matrices"),
])
def test_a_lora_upload_that_is_no_lora_safetensors_file_gets_a_sentence_and_nothing_is_stored(
        client, tmp_path, body, sentence):
    answer = client.post("/v1/loras", content=body, headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 422 and sentence in answer.json()["detail"]
    assert not any((tmp_path / "data" / "loras").iterdir())


@pytest.mark.parametrize("streamed", [False, True])
def test_a_lora_over_the_engines_limit_is_refused_declared_or_streamed(tmp_path, tiny_lora, streamed):
    options = ServerOptions(data_dir=tmp_path / "data", lora_max_bytes=len(tiny_lora) - 1)
    body = (tiny_lora[i:i + 4096] for i in range(0, len(tiny_lora), 4096)) if streamed else tiny_lora
    with engine_client(options) as client:
        answer = client.post("/v1/loras", content=body, headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 413 and "(--lora-max-mb)" in answer.json()["detail"]
        assert client.post("/v1/images", json={"data_b64": png_b64()}).status_code == 201  # others keep 64 MiB
        assert client.get("/v1/health").json()["lora_max_bytes"] == len(tiny_lora) - 1  # clients check first
    assert not any((tmp_path / "data" / "loras").glob("*"))


def done_parent(data_dir, **styles) -> str:
    """A finished generate job in the server's store (no pipeline runs), with those styles."""
    store = JobStore(data_dir)
    job_id = store.submit("generate", stored_request(**styles)).job_id
    if store.claim(job_id):  # else the server's worker took it: its run_job finishes it at once
        store.finish(job_id, "done")
    deadline = time.monotonic() + 10
    while store.get(job_id).state != "done" and time.monotonic() < deadline:
        time.sleep(0.05)
    return job_id


def test_an_edit_job_inherits_its_parents_uploaded_lora_and_image_unless_it_names_its_own(
        client, tmp_path, tiny_lora, hub_cache):
    data_dir = tmp_path / "data"
    lora_id = upload_lora(client, tiny_lora)["lora_id"]
    image_id = client.post("/v1/images", json={"data_b64": png_b64()}).json()["image_id"]
    parent = done_parent(data_dir, loras=[{"id": lora_id, "scale": 0.7}], image_id=image_id, image_scale=0.4)
    edit = {"kind": "edit", "parent_job_id": parent, "instruction": "make him older", "preset": "tiny"}

    answer = client.post("/v1/jobs", json=edit)
    assert answer.status_code == 202, answer.text
    inherited = JobStore(data_dir).get(answer.json()["job_id"]).request
    assert inherited["loras"] == [{"id": lora_id, "scale": 0.7}]
    cfg = job_config(inherited, ServerOptions(data_dir=data_dir))
    assert cfg.models.loras == (str(data_dir / "loras" / f"{lora_id[len('upload:'):]}.safetensors"),)
    assert (cfg.guidance.image, cfg.guidance.image_scale) == (str(data_dir / "images" / f"{image_id}.png"), 0.4)
    assert cfg.prompt == "a clown"

    # Its own LoRA wins, the image is still the parent's; the runner's function says the same without a server.
    own = dict(edit, loras=[{"id": "styles/tiny-cartoon", "scale": 0.2}])
    request = edit_request(EditRequest.model_validate(own).model_dump(), JobStore(data_dir).get(parent).request)
    cfg = job_config(request, ServerOptions(data_dir=data_dir))
    assert cfg.models.loras == (str(hub_cache),) and cfg.models.lora_scales == (0.2,)
    assert request["image_id"] == image_id

    # parent_styles false: only what the edit names, here nothing.
    answer = client.post("/v1/jobs", json=dict(edit, parent_styles=False))
    assert answer.status_code == 202, answer.text
    plain = job_config(JobStore(data_dir).get(answer.json()["job_id"]).request, ServerOptions(data_dir=data_dir))
    assert (plain.prompt, plain.models.loras, plain.guidance.image) == ("a clown", (), "")


def lora_bytes(value: float) -> bytes:
    """A small LoRA file of its own bytes."""
    return save_safetensors({"unet.up.lora_A.weight": np.full((8, 4), value, np.float32),
                             "unet.up.lora_B.weight": np.full((4, 8), value, np.float32)})


def test_uploaded_loras_beyond_the_cache_go_least_recently_used_first_never_one_a_queued_job_names(tmp_path):
    data_dir = tmp_path / "data"
    a, b, c, d = (lora_bytes(value) for value in range(4))
    # Room for three; no worker runs (no lifespan), so a submitted job stays queued.
    client = TestClient(create_app(ServerOptions(data_dir=data_dir, lora_cache_bytes=int(3.5 * len(a))), TOKEN,
                                   run_job=lambda *args: None), headers={"Authorization": f"Bearer {TOKEN}"})
    ids = {}
    for name, data in (("a", a), ("b", b), ("c", c)):
        ids[name] = upload_lora(client, data)["lora_id"]
        time.sleep(0.02)  # distinct use times
    JobStore(data_dir).submit("generate", stored_request(loras=[{"id": ids["a"], "scale": 1.0}]))  # queued
    assert upload_lora(client, b)["lora_id"] == ids["b"]  # uploaded again: used now
    time.sleep(0.02)
    ids["d"] = upload_lora(client, d)["lora_id"]  # four: the least recently used that no job needs goes

    stored = {path.name.split(".")[0] for path in (data_dir / "loras").iterdir()}
    assert stored == {ids[name][len("upload:"):] for name in "abd"}
    gone = client.post("/v1/jobs", json=generate_request(loras=[{"id": ids["c"]}]))
    assert gone.status_code == 422 and "upload the file first" in gone.json()["detail"]
    # An edit that would inherit the evicted LoRA says what happened and the ways on.
    parent = done_parent(data_dir, loras=[{"id": ids["c"], "scale": 0.7}])
    edit = {"kind": "edit", "parent_job_id": parent, "instruction": "make him older", "preset": "tiny"}
    answer = client.post("/v1/jobs", json=edit)
    assert answer.status_code == 422
    assert answer.json()["detail"] == ("The style LoRA the parent avatar was made with is no longer on this engine (it "
                                       "keeps the most recently used uploads, --lora-cache-mb); name the LoRA again, "
                                       "or edit without the parent's style.")
    assert client.post("/v1/jobs", json=dict(edit, parent_styles=False)).status_code == 202
    assert client.post("/v1/jobs", json=dict(edit, loras=[{"id": ids["b"]}])).status_code == 202
