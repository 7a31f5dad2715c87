"""`headsculpt download-models` and the fetch-when-missing path of `generate`, against a local server
that answers as the Hugging Face Hub does (tests/engine/fake_hub.py), serving the tiny models under
the default ids, with decoys (.ckpt, .bin, EMA and full-precision copies) the engine must not fetch."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fake_hub import FakeHub, tiny_default_repos
from headsculpt_engine.config import (DEFAULT_BASE_MODEL, DEFAULT_FACE_CONTROLNET, DEFAULT_IP2P_CONTROLNET,
                                      ModelsConfig)
from headsculpt_engine.errors import DownloadError
from headsculpt_engine.models import download
from headsculpt_engine.models.download_progress import JsonProgress, human_size
from headsculpt_engine.models.loading import tiny_models_dir

SD, FACE, IP2P = DEFAULT_BASE_MODEL, DEFAULT_FACE_CONTROLNET, DEFAULT_IP2P_CONTROLNET
UNET_FP16 = "unet/diffusion_pytorch_model.fp16.safetensors"
# What the engine loads from the default set: fp16 weights where a repository has them.
EXPECTED = {
    SD: {"scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
         "tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
         UNET_FP16, "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"},
    FACE: {"diffusion_sd15/config.json", "diffusion_sd15/diffusion_pytorch_model.safetensors"},  # no fp16 there
    IP2P: {"config.json", "diffusion_pytorch_model.fp16.safetensors"},
}
PROMPT = "a head of a man"


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    return tiny_default_repos(tmp_path_factory.mktemp("repos"))


@pytest.fixture
def hub(repos):
    server = FakeHub(repos).start()
    yield server
    server.stop()


def _env(tmp_path: Path, hub: FakeHub | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_CACHE=str(tmp_path / "cache"),
               HF_ENDPOINT=hub.endpoint if hub else "http://127.0.0.1:9", HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def headsculpt(tmp_path: Path, hub: FakeHub | None, *args: str, timeout: int = 120,
               **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headsculpt_engine", *args], capture_output=True, text=True,
                          env=_env(tmp_path, hub, **env), cwd=tmp_path, timeout=timeout)


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def _snapshot(cache: Path, repo: str) -> Path:
    return cache / f"models--{repo.replace('/', '--')}" / "snapshots" / FakeHub.commit(repo)


def _assert_cache_is_sound(cache: Path, hub: FakeHub) -> None:
    """No partial file anywhere, and every file the cache shows is complete and right."""
    assert not list(cache.rglob("*.incomplete"))
    for repo in hub.files:
        snapshot = _snapshot(cache, repo)
        for entry in (snapshot.rglob("*") if snapshot.exists() else ()):
            if entry.is_symlink() or entry.is_file():
                assert entry.read_bytes() == hub.files[repo][entry.relative_to(snapshot).as_posix()].data, entry


def _cached_files(cache: Path, repo: str) -> set[str]:
    snapshot = _snapshot(cache, repo)
    return {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()} if snapshot.exists() else set()


def test_download_fetches_only_what_the_engine_loads_into_the_standard_cache(tmp_path, hub):
    done = headsculpt(tmp_path, hub, "download-models", "--progress", "json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    events = _events(done.stdout)
    plan, last = events[0], events[-1]
    assert plan["event"] == "plan" and last["event"] == "done"
    assert {m["id"]: {f["path"] for f in m["files"]} for m in plan["models"]} == EXPECTED
    sizes = {(m["id"], f["path"]): f["size"] for m in plan["models"] for f in m["files"]}
    assert sizes == {(r, p): len(hub.files[r][p].data) for r, paths in EXPECTED.items() for p in paths}
    assert plan["to_download"] == plan["size"] == sum(sizes.values()) == last["downloaded"] == last["total"]
    progress = [e for e in events if e["event"] == "progress"]
    assert {(e["model"], e["file"]) for e in progress if e["done"] == e["size"]} == set(sizes)
    assert all(0 <= e["done"] <= e["size"] and e["total_done"] <= e["total"] for e in progress)
    assert progress[-1]["total_done"] == plan["to_download"]

    # The standard cache layout: refs/main -> commit, snapshot entries linking to blobs named by hash.
    cache = tmp_path / "cache"
    for repo, paths in EXPECTED.items():
        folder = cache / f"models--{repo.replace('/', '--')}"
        assert (folder / "refs" / "main").read_text() == FakeHub.commit(repo)
        assert _cached_files(cache, repo) == paths
        for path in paths:
            entry = _snapshot(cache, repo) / path
            served = hub.files[repo][path]
            assert entry.is_symlink() and entry.read_bytes() == served.data
            assert entry.resolve().parent == (folder / "blobs").resolve()
            assert entry.resolve().name == (served.sha256 if served.lfs else served.git_sha1)
    # Decoys (.ckpt, .bin, EMA, full-precision duplicates, safety checker) were never requested.
    fetched = {r.path for r in hub.gets()}
    assert len(hub.gets()) == len(sizes) and not any(p.endswith((".ckpt", ".bin")) for p in fetched)

    before = len(hub.gets())
    again = headsculpt(tmp_path, hub, "download-models", "--progress", "json")
    assert again.returncode == 0, again.stderr
    events = _events(again.stdout)
    assert events[0]["to_download"] == 0 and events[-1] == {"event": "done", "downloaded": 0, "total": 0}
    assert len(hub.gets()) == before  # a second run downloads nothing

    # The loader takes the fp16 files the cache holds (the CPU computes in fp32: upcast on load).
    check = ("import torch; from safetensors.torch import load_file; "
             "from headsculpt_engine.config import ModelsConfig; "
             "from headsculpt_engine.models.loading import load_diffusion_models; "
             "m = load_diffusion_models(ModelsConfig(), 'cpu', with_ip2p=True); "
             f"w = load_file({str(_snapshot(cache, SD) / UNET_FP16)!r}); "
             "ok = all(torch.equal(p, w[k].float()) for k, p in m.unet.state_dict().items()); "
             "print('fp16-loaded' if ok and m.unet.dtype == torch.float32 else 'mismatch')")
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
                            env=_env(tmp_path, None, HF_HUB_OFFLINE="1"))
    assert loaded.stdout.strip() == "fp16-loaded", loaded.stderr[-2000:]


def test_dry_run_lists_models_and_sizes_and_downloads_nothing(tmp_path, hub):
    listed = headsculpt(tmp_path, hub, "download-models", "--dry-run")
    assert listed.returncode == 0, listed.stderr
    sd_size = sum(len(hub.files[SD][p].data) for p in EXPECTED[SD])
    assert f"{SD}  " in listed.stdout and human_size(sd_size) in listed.stdout
    assert f"{FACE} (diffusion_sd15)" in listed.stdout and UNET_FP16 in listed.stdout
    assert "To download:" in listed.stdout
    assert hub.gets() == [] and not (tmp_path / "cache").exists()


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, hub, monkeypatch):
    """In process, with huggingface_hub's read size lowered from 10 MB to 64 kB so that a tiny file
    spans several reads, as a real 1.7 GB UNet spans many: the bytes read before the drop are kept."""
    import io

    from huggingface_hub import constants

    chunk = 64 * 1024
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", chunk)
    hub.drop_once.add(f"{SD}/{UNET_FP16}")
    cache = tmp_path / "cache"
    plans = download.plan_downloads(download.specs_from_names([SD]), endpoint=hub.endpoint, cache_dir=cache)
    stream = io.StringIO()
    download.download(plans, JsonProgress(stream, interval_s=0.0), endpoint=hub.endpoint, cache_dir=cache)
    served = hub.files[SD][UNET_FP16]
    unet_gets = [r for r in hub.gets() if r.path == f"/blobs/{served.sha256}"]
    assert len(unet_gets) == 2
    assert "range" not in unet_gets[0].headers
    kept = len(served.data) // 2 // chunk * chunk  # the whole reads before the drop
    assert kept > 0 and unet_gets[1].headers["range"] == f"bytes={kept}-"  # only the rest again
    assert (_snapshot(cache, SD) / UNET_FP16).read_bytes() == served.data
    unet_done = [e["done"] for e in _events(stream.getvalue()) if e.get("file") == UNET_FP16]
    assert unet_done == sorted(unet_done) and unet_done[-1] == len(served.data)  # progress never goes back
    _assert_cache_is_sound(cache, hub)


@pytest.mark.parametrize("fault", ["401", "404", "dropped"])
def test_failures_give_a_sentence_and_leave_no_broken_cache_entry(tmp_path, hub, fault):
    models = [SD]
    if fault == "401":
        hub.gated[SD] = "hf_the-right-token"
        expected = f"The Hugging Face Hub refused access to the file scheduler/scheduler_config.json of {SD} (HTTP 401)"
    elif fault == "404":
        models = [SD, "nobody/no-such-model"]
        expected = "The model nobody/no-such-model was not found on the Hugging Face Hub (HTTP 404): check the model id."
    else:
        hub.drop_once.add(f"{SD}/{UNET_FP16}")
        hub.drop_always.add(f"{SD}/{UNET_FP16}")
        expected = f"The download of the file {UNET_FP16} of {SD} from {hub.endpoint} failed (the connection was lost)"
    failed = headsculpt(tmp_path, hub, "download-models", "--progress", "json", "--models", *models)
    assert failed.returncode == 2
    lines = failed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"headsculpt: error: {expected}"), failed.stderr
    assert _events(failed.stdout)[-1] == {"event": "error", "message": lines[0].removeprefix("headsculpt: error: ")}
    cache = tmp_path / "cache"
    _assert_cache_is_sound(cache, hub)
    assert UNET_FP16 not in _cached_files(cache, SD)

    # Nothing left behind stands in the way: once the fault is gone, the same command finishes.
    hub.gated.clear(), hub.drop_always.clear()
    again = headsculpt(tmp_path, hub, "download-models", "--models", SD)
    assert again.returncode == 0, again.stderr
    assert _cached_files(cache, SD) == EXPECTED[SD]
    _assert_cache_is_sound(cache, hub)


def test_the_token_goes_to_the_hub_only_and_is_never_printed(tmp_path, hub):
    secret = "hf_SECRETtoken1234567890"
    hub.gated[SD] = secret
    token_file = tmp_path / "token.txt"
    for token, code in (("hf_wrongTOKEN0987654321", 2), (secret, 0)):
        token_file.write_text(token + "\n")
        result = headsculpt(tmp_path, hub, "download-models", "--models", SD, "--token-file", str(token_file))
        assert result.returncode == code, result.stderr
        assert token not in result.stdout + result.stderr
    resolves = [r for r in hub.requests if r.server == "hub" and "/resolve/" in r.path]
    assert resolves[-1].headers.get("authorization") == f"Bearer {secret}"
    assert not any("authorization" in r.headers for r in hub.requests if r.server == "cdn")  # never to the CDN
    assert _cached_files(tmp_path / "cache", SD) == EXPECTED[SD]
    # HF_TOKEN serves as well.
    shutil.rmtree(tmp_path / "cache")
    result = headsculpt(tmp_path, hub, "download-models", "--models", SD, HF_TOKEN=secret)
    assert result.returncode == 0 and secret not in result.stdout + result.stderr


@pytest.mark.parametrize("how", ["--offline", "HF_HUB_OFFLINE=1"])
def test_generate_offline_with_models_missing_stops_with_the_sentence_and_writes_no_run(tmp_path, hub, how):
    flag, env = (["--offline"], {}) if how == "--offline" else ([], {"HF_HUB_OFFLINE": "1"})
    run_dir = tmp_path / "run"
    result = headsculpt(tmp_path, hub, "generate", "--prompt", PROMPT, "--out", str(run_dir), *flag, **env)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert re.fullmatch(
        f"headsculpt: error: The model {SD} \\(subfolder tokenizer\\) is not in the local Hugging Face cache, and "
        "this run may not download it \\(--offline, HF_HUB_OFFLINE=1, or a job on the engine server\\): get it "
        f"with `headsculpt download-models --models {SD}`, or pass a local folder.", line), line
    assert not run_dir.exists()
    assert hub.requests == []  # not even a look at the Hub


def test_generate_loads_the_downloaded_default_models_offline(tmp_path, hub):
    """The one end-to-end run: download-models, then `generate --models default --offline` with no Hub
    at all (the explicit --models wins over the tiny models the tiny preset implies)."""
    fetched = headsculpt(tmp_path, hub, "download-models")
    assert fetched.returncode == 0, fetched.stderr
    hub.stop()
    run_dir = tmp_path / "run"
    offline = headsculpt(tmp_path, None, "generate", "--prompt", PROMPT, "--preset", "tiny", "--models", "default",
                         "--stage", "coarse", "--device", "cpu", "--set", "coarse.iterations=1", "--offline",
                         "--out", str(run_dir), timeout=300)
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert "Models (sizes" not in offline.stdout
    record = json.loads((run_dir / "run.json").read_text())
    models = record["config"]["models"]
    assert (models["base"], models["face_controlnet"], models["allow_download"]) == (SD, FACE, False)
    assert (run_dir / "coarse" / "checkpoint.pt").is_file()


def test_loading_fetches_what_a_run_lacks_sizes_first_and_then_nothing(tmp_path, hub):
    """The path `generate` and `edit` take when downloads are allowed (their default): the size table,
    the bars, then the models load; a second load finds everything and asks the Hub nothing."""
    script = ("from headsculpt_engine.config import ModelsConfig; "
              "from headsculpt_engine.models.loading import load_diffusion_models; "
              "load_diffusion_models(ModelsConfig(allow_download=True), 'cpu'); print('second'); "
              "load_diffusion_models(ModelsConfig(allow_download=True), 'cpu'); print('loaded')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=_env(tmp_path, hub))
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = result.stdout.split("second\n")
    assert first.startswith("Models (sizes from the Hugging Face Hub):") and "To download: " in first
    assert f"{FACE} (diffusion_sd15)" in first and IP2P not in first  # generation needs no IP2P ControlNet
    assert second == "loaded\n" and "  total: 100%" in result.stderr
    assert len([r for r in hub.requests if r.path.startswith("/api/")]) == 2  # the first load only
    cache = tmp_path / "cache"
    assert _cached_files(cache, SD) == EXPECTED[SD] and _cached_files(cache, FACE) == EXPECTED[FACE]
    assert not _snapshot(cache, IP2P).exists()


def test_generate_and_edit_download_unless_offline(monkeypatch):
    from headsculpt_engine.cli import build_parser
    from headsculpt_engine.commands.options import config_from_args

    def allowed(*argv: str) -> bool:
        return config_from_args(build_parser().parse_args(list(argv))).models.allow_download

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert allowed("generate", "--prompt", PROMPT)
    assert allowed("edit", "--from", "run", "--instruction", "make him older", "--preset", "draft")
    assert not allowed("generate", "--prompt", PROMPT, "--offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not allowed("generate", "--prompt", PROMPT)


def test_choose_files_prefers_fp16_safetensors_and_never_pickles():
    sizes = {"unet/config.json": 1, "unet/diffusion_pytorch_model.safetensors": 40, UNET_FP16: 20,
             "unet/diffusion_pytorch_model.bin": 40, "vae/config.json": 1, "vae/diffusion_pytorch_model.safetensors": 8}
    parts = (download.Part("unet", weights=download.DIFFUSERS_WEIGHTS),
             download.Part("vae", weights=download.DIFFUSERS_WEIGHTS))
    assert download.choose_files("a/b", parts, sizes) == [
        ("unet/config.json", 1), (UNET_FP16, 20), ("vae/config.json", 1), ("vae/diffusion_pytorch_model.safetensors", 8)]
    with pytest.raises(DownloadError, match="no safetensors weights in unet"):
        download.choose_files("a/b", parts[:1], {"unet/config.json": 1, "unet/diffusion_pytorch_model.bin": 4})
    with pytest.raises(DownloadError, match="has no vae/config.json"):
        download.choose_files("a/b", parts[1:], {"vae/diffusion_pytorch_model.safetensors": 8})


def test_local_variant_matches_the_compute_precision(tmp_path):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"x")
    stem = download.DIFFUSERS_WEIGHTS
    assert download.local_variant(str(tmp_path), "unet", stem, prefer_half=False) == "fp16"  # the only one there
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    assert download.local_variant(str(tmp_path), "unet", stem, prefer_half=False) is None
    assert download.local_variant(str(tmp_path), "unet", stem, prefer_half=True) == "fp16"


def test_model_names_and_specs():
    default = download.specs_from_names(["default"])
    assert [s.repo_id for s in default] == [SD, FACE, IP2P]
    assert download.specs_from_names(["default", SD]) == default  # no duplicates
    assert download.specs_from_names(["someone/other"])[0].parts is None  # decided from its file list
    for bad in ("tiny", "not-an-id"):
        with pytest.raises(DownloadError, match="not a Hugging Face model id"):
            download.specs_from_names([bad])
    # Local folders are never downloaded; generation does not need the IP2P ControlNet.
    cfg = ModelsConfig(face_controlnet=str(tiny_models_dir() / "face-controlnet"))
    assert [s.repo_id for s in download.model_specs(cfg, with_ip2p=False)] == [SD]


def test_json_progress_lines():
    import io

    stream = io.StringIO()
    progress = JsonProgress(stream, interval_s=0.0)
    file = download.PlannedFile(SD, UNET_FP16, 10, cached=False)
    plan = download.ModelPlan(download.ModelSpec(SD, download.PIPELINE_PARTS), (file,))
    progress.start([plan])
    progress.file_bytes(file, 4)
    progress.file_done(file)
    progress.finish(10)
    events = _events(stream.getvalue())
    assert [e["event"] for e in events] == ["plan", "progress", "progress", "done"]
    assert events[1] == {"event": "progress", "model": SD, "file": UNET_FP16, "done": 4, "size": 10,
                         "total_done": 4, "total": 10}
    assert events[2]["done"] == events[2]["total_done"] == 10 and events[3]["downloaded"] == 10


def test_the_server_never_downloads():
    from headsculpt_engine.server.runner import ServerOptions, job_config

    request = {"preset": "draft", "prompt": PROMPT, "seed": 0, "kind": "generate"}
    assert job_config(request, ServerOptions(data_dir=Path("."))).models.allow_download is False


def test_download_models_refuses_with_hub_offline_and_writes_nothing(tmp_path, hub):
    result = headsculpt(tmp_path, hub, "download-models", "--progress", "json", HF_HUB_OFFLINE="1")
    assert result.returncode == 2
    assert result.stderr == ("headsculpt: error: HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it "
                             "and try again.\n")
    assert _events(result.stdout)[-1]["event"] == "error"
    assert hub.requests == [] and not (tmp_path / "cache").exists()


def test_a_cancelled_download_leaves_no_partial_file(tmp_path, hub):
    """The add-on cancels by terminating the process (SIGTERM): the partial file goes, not the cache."""
    import signal
    import time

    hub.stall.add(f"{SD}/{UNET_FP16}")
    process = subprocess.Popen([sys.executable, "-m", "headsculpt_engine", "download-models", "--models", SD,
                                "--progress", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_env(tmp_path, hub), cwd=tmp_path)
    blob = f"/blobs/{hub.files[SD][UNET_FP16].sha256}"
    deadline = time.monotonic() + 60
    while not any(r.path == blob for r in hub.gets()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((tmp_path / "cache").rglob("*.incomplete"))  # the partial file is there while it runs
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err == "headsculpt: interrupted\n"
    assert not list((tmp_path / "cache").rglob("*.incomplete"))
    _assert_cache_is_sound(tmp_path / "cache", hub)


def test_download_models_knows_evals_clip_and_eval_then_loads_it_offline(tmp_path):
    """`download-models --models openai/clip-vit-large-patch14` fetches what `eval` loads (not the other
    frameworks' weights beside it), and `eval`'s loader then finds it in the cache with no Hub at all."""
    from headsculpt_engine.config import DEFAULT_CLIP_MODEL
    from headsculpt_engine.models.tiny_clip import make_tiny_clip

    repo = make_tiny_clip(tmp_path / "clip-repo")
    for decoy in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"):
        (repo / decoy).write_bytes(os.urandom(3000))
    hub = FakeHub({DEFAULT_CLIP_MODEL: repo}).start()
    try:
        fetched = headsculpt(tmp_path, hub, "download-models", "--models", DEFAULT_CLIP_MODEL)
    finally:
        hub.stop()
    assert fetched.returncode == 0, fetched.stderr
    assert _cached_files(tmp_path / "cache", DEFAULT_CLIP_MODEL) == {
        "config.json", "preprocessor_config.json", "tokenizer_config.json", "vocab.json", "merges.txt",
        "model.safetensors"}
    script = ("from headsculpt_engine.evaluation.clip import load_clip; "
              "print(load_clip().embed_texts(['a head of a man']).shape)")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=_env(tmp_path, None, HF_HUB_OFFLINE="1"))
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip() == "(1, 16)"
