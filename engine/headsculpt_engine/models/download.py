"""Fetch exactly the files the engine loads from the Hugging Face Hub into the standard cache.

The engine calls `from_pretrained` on a few parts of each repository (models/loading.py); a full
snapshot of those repositories would also bring checkpoints (.ckpt), EMA and full-precision
duplicates, pickled .bin copies and the safety checker: several times the size. So each part names
its files, and the weights are the half-precision safetensors (diffusers' `variant="fp16"`) where
the repository has them, else the full-precision safetensors. Pickled weights are never fetched.

Resuming: huggingface_hub resumes a dropped connection within a run (a Range request from the bytes
it has), and a new run skips every file already in the cache; a file whose download was stopped is
fetched again from its start (huggingface_hub >= 1.x discards its partial file).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from ..config import (DEFAULT_BASE_MODEL, DEFAULT_CLIP_MODEL, DEFAULT_FACE_CONTROLNET,
                      DEFAULT_FACE_CONTROLNET_SUBFOLDER, DEFAULT_IP2P_CONTROLNET, DEFAULT_IP_ADAPTER,
                      HEADARTIST_BASE_MODEL, ModelsConfig)
from ..errors import DownloadError

FP16 = "fp16"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"  # weights stem of diffusers models (UNet, VAE, ControlNet)
TRANSFORMERS_WEIGHTS = "model"  # weights stem of transformers models (the CLIP text encoder)
CLIP_TOKENIZER_FILES = ("vocab.json", "merges.txt")  # the byte-pair vocabulary a CLIP tokenizer needs


@dataclass(frozen=True)
class Part:
    """One `from_pretrained` call of the engine on a repository folder ("" = the root)."""

    folder: str
    weights: str = ""  # weights file stem; "" for parts without weights (tokenizer, scheduler)
    required: tuple[str, ...] = ("config.json",)
    whole_folder: bool = False  # every file of the folder (a tokenizer's small text files)


# What models/loading.py loads from a Stable Diffusion pipeline repository.
PIPELINE_PARTS = (
    Part("tokenizer", required=(*CLIP_TOKENIZER_FILES, "tokenizer_config.json"), whole_folder=True),
    Part("scheduler", required=("scheduler_config.json",), whole_folder=True),
    Part("text_encoder", weights=TRANSFORMERS_WEIGHTS),
    Part("unet", weights=DIFFUSERS_WEIGHTS),
    Part("vae", weights=DIFFUSERS_WEIGHTS),
)


# What `headsculpt eval` loads from a CLIP repository (evaluation/clip.py): the model, its tokenizer and
# its image processor, all at the root beside the other frameworks' weights, which are not fetched.
CLIP_PARTS = (Part("", weights=TRANSFORMERS_WEIGHTS, required=(
    "config.json", "preprocessor_config.json", "tokenizer_config.json", *CLIP_TOKENIZER_FILES)),)


# What models/ip_adapter.py loads from h94/IP-Adapter: the SD 1.5 adapter and its image encoder.
IP_ADAPTER_PARTS = (Part("models", required=("ip-adapter_sd15.safetensors",)),
                    Part("models/image_encoder", weights=TRANSFORMERS_WEIGHTS))


def controlnet_parts(subfolder: str = "") -> tuple[Part, ...]:
    return (Part(subfolder, weights=DIFFUSERS_WEIGHTS),)


@dataclass(frozen=True)
class ModelSpec:
    """A repository and the parts of it the engine loads; parts None: decided from its file list."""

    repo_id: str
    parts: tuple[Part, ...] | None

    @property
    def label(self) -> str:
        folders = sorted({p.folder for p in self.parts or ()} - {""})
        return f"{self.repo_id} ({folders[0]})" if len(folders) == 1 else self.repo_id


# The ids whose parts are known without asking the Hub.
KNOWN_MODELS = {
    DEFAULT_BASE_MODEL: PIPELINE_PARTS,
    HEADARTIST_BASE_MODEL: PIPELINE_PARTS,
    DEFAULT_FACE_CONTROLNET: controlnet_parts(DEFAULT_FACE_CONTROLNET_SUBFOLDER),
    DEFAULT_IP2P_CONTROLNET: controlnet_parts(),
    DEFAULT_CLIP_MODEL: CLIP_PARTS,
    DEFAULT_IP_ADAPTER: IP_ADAPTER_PARTS,
}


def is_hub_id(name: str) -> bool:
    """A Hugging Face id rather than a local folder (the same test `from_pretrained_offline` uses)."""
    path = Path(name).expanduser()
    return not (path.is_absolute() or name.startswith(".") or path.exists())


def model_specs(cfg: ModelsConfig, with_ip2p: bool, with_face: bool = True,
                with_image_prompt: bool = False) -> list[ModelSpec]:
    """The Hub repositories a run with `cfg` loads (local folders are not downloaded)."""
    wanted = [(cfg.base, PIPELINE_PARTS)]
    if with_face:
        wanted.append((cfg.face_controlnet, controlnet_parts(cfg.face_controlnet_subfolder)))
    if with_ip2p:
        wanted.append((cfg.ip2p_controlnet, controlnet_parts()))
    if with_image_prompt:
        wanted.append((cfg.ip_adapter, IP_ADAPTER_PARTS))
    return [ModelSpec(name, parts) for name, parts in wanted if is_hub_id(name)]


def specs_from_names(names: list[str]) -> list[ModelSpec]:
    """`--models default|ID...`: the default set (generation and editing), or the given Hub ids."""
    specs: list[ModelSpec] = []
    for name in names:
        if name == "default":
            found = model_specs(ModelsConfig(), with_ip2p=True)
        elif not is_hub_id(name) or name.count("/") != 1:
            raise DownloadError(f"{name!r} is not a Hugging Face model id (owner/name): pass 'default' or ids "
                                "such as stable-diffusion-v1-5/stable-diffusion-v1-5.")
        else:
            found = [ModelSpec(name, KNOWN_MODELS.get(name))]
        specs += [spec for spec in found if spec not in specs]
    return specs


def weights_file(stem: str, variant: str | None) -> str:
    return f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def cached_path(repo_id: str, path: str, cache_dir: str | Path | None = None) -> str | None:
    """The file in the local cache at the revision `main` points to, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, path, cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def is_present(name: str, path: str, cache_dir: str | Path | None = None) -> bool:
    """Whether `path` is in the local folder `name`, or in the cache for the Hub id `name`."""
    return bool(cached_path(name, path, cache_dir)) if is_hub_id(name) else (Path(name).expanduser() / path).is_file()


def local_variant(name: str, folder: str, stem: str, prefer_half: bool,
                  cache_dir: str | Path | None = None) -> str | None:
    """The weights variant to load from a local folder or the cache: both are accepted, the one that
    matches the compute precision first; None also when neither is there (from_pretrained says so)."""
    return next((variant for variant in ((FP16, None) if prefer_half else (None, FP16))
                 if is_present(name, _join(folder, weights_file(stem, variant)), cache_dir)), None)


def _part_is_cached(repo_id: str, part: Part, cache_dir: str | Path | None) -> bool:
    if not all(cached_path(repo_id, _join(part.folder, name), cache_dir) for name in part.required):
        return False
    return not part.weights or any(cached_path(repo_id, _join(part.folder, weights_file(part.weights, v)), cache_dir)
                                   for v in (FP16, None))


def missing_specs(specs: list[ModelSpec], cache_dir: str | Path | None = None) -> list[ModelSpec]:
    """The specs with a part not in the local cache (unknown parts count as missing)."""
    return [spec for spec in specs
            if spec.parts is None or not all(_part_is_cached(spec.repo_id, p, cache_dir) for p in spec.parts)]


@dataclass(frozen=True)
class PlannedFile:
    repo_id: str
    path: str
    size: int
    cached: bool


@dataclass(frozen=True)
class ModelPlan:
    spec: ModelSpec
    files: tuple[PlannedFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def to_download(self) -> int:
        return sum(f.size for f in self.files if not f.cached)


def _parts_from_listing(repo_id: str, names: set[str]) -> tuple[Part, ...]:
    """An id the engine does not know: a pipeline if it has a UNet, else a ControlNet at its root."""
    if "unet/config.json" in names:
        return PIPELINE_PARTS
    if "config.json" in names:
        return controlnet_parts()
    raise DownloadError(f"The repository {repo_id} is neither a Stable Diffusion pipeline (unet/config.json) nor "
                        "a ControlNet (config.json): the engine cannot load it.")


def choose_files(repo_id: str, parts: tuple[Part, ...], sizes: dict[str, int]) -> list[tuple[str, int]]:
    """The files of `parts` in a repository listing {path: size}: required files, and the fp16
    safetensors weights where present, else the full-precision ones."""
    chosen: dict[str, int] = {}
    for part in parts:
        where = part.folder or "its root"
        for name in part.required:
            path = _join(part.folder, name)
            if path not in sizes:
                raise DownloadError(f"The repository {repo_id} has no {path}: it is not a model the engine can load.")
            chosen[path] = sizes[path]
        if part.whole_folder:
            prefix = _join(part.folder, "")
            chosen.update({p: s for p, s in sizes.items() if p.startswith(prefix) and "/" not in p[len(prefix):]})
        if part.weights:
            path = next((p for p in (_join(part.folder, weights_file(part.weights, v)) for v in (FP16, None))
                         if p in sizes), None)
            if path is None:
                raise DownloadError(f"The repository {repo_id} has no safetensors weights in {where}; the engine "
                                    "loads only safetensors files (never pickled .bin or .ckpt files).")
            chosen[path] = sizes[path]
    return sorted(chosen.items())


def plan_downloads(specs: list[ModelSpec], *, token: str | None = None, endpoint: str | None = None,
                   cache_dir: str | Path | None = None) -> list[ModelPlan]:
    """Ask the Hub for each repository's file list and sizes, and pick the files to fetch."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint)
    plans = []
    for spec in specs:
        with hub_errors(spec.repo_id, endpoint):
            info = api.model_info(spec.repo_id, revision="main", files_metadata=True, token=token)
        sizes = {s.rfilename: int(s.lfs.size if s.lfs else (s.size or 0)) for s in info.siblings or ()}
        parts = spec.parts or _parts_from_listing(spec.repo_id, set(sizes))
        files = tuple(PlannedFile(spec.repo_id, path, size, cached_path(spec.repo_id, path, cache_dir) is not None)
                      for path, size in choose_files(spec.repo_id, parts, sizes))
        plans.append(ModelPlan(ModelSpec(spec.repo_id, parts), files))
    return plans


class DownloadProgress(Protocol):
    """What a download reports (models/download_progress.py: terminal bars or JSON lines)."""

    def start(self, plans: list[ModelPlan]) -> None: ...
    def file_bytes(self, file: PlannedFile, done: int) -> None: ...
    def file_done(self, file: PlannedFile) -> None: ...
    def finish(self, downloaded: int) -> None: ...


def download(plans: list[ModelPlan], progress: DownloadProgress, *, token: str | None = None,
             endpoint: str | None = None, cache_dir: str | Path | None = None) -> int:
    """Fetch the planned files not yet cached; return the bytes fetched."""
    from huggingface_hub import hf_hub_download

    progress.start(plans)
    downloaded = 0
    for file in (f for plan in plans for f in plan.files if not f.cached):
        with hub_errors(file.repo_id, endpoint, file.path), _quiet_hub_logger():
            hf_hub_download(file.repo_id, file.path, revision="main", token=token, endpoint=endpoint,
                            cache_dir=cache_dir, tqdm_class=_bar_class(progress, file))
        progress.file_done(file)
        downloaded += file.size
    progress.finish(downloaded)
    return downloaded


def fetch_missing(specs: list[ModelSpec], progress: DownloadProgress, *, token: str | None = None) -> None:
    """Download what `specs` need and the cache lacks; nothing (and no network) when all is there."""
    missing = missing_specs(specs)
    if missing:
        download(plan_downloads(missing, token=token), progress, token=token)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value, as huggingface_hub reads it."""
    return any(os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


class _FileBar:
    """Stands in for huggingface_hub's per-file tqdm bar and forwards the byte count to a
    DownloadProgress. `update_transfer` exists so that Xet downloads use one bar, not two."""

    progress: DownloadProgress
    file: PlannedFile

    def __init__(self, *args, total: int | None = None, initial: int = 0, **kwargs) -> None:
        self.total, self.n = total, initial
        self.progress.file_bytes(self.file, self.n)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.progress.file_bytes(self.file, self.n)

    def update_transfer(self, n: int) -> None:
        """Network bytes (Xet: before reconstruction); progress counts the bytes written."""

    def set_postfix_str(self, *args, **kwargs) -> None:
        """Speed text of the library's own bars: not shown."""

    set_transfer_postfix_str = set_postfix_str

    def refresh(self) -> None:
        """Nothing to draw: the DownloadProgress draws."""

    def close(self) -> None:
        """The file's end is reported by `download` once the file is in the cache."""

    def __enter__(self) -> "_FileBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bar_class(progress: DownloadProgress, file: PlannedFile) -> type[_FileBar]:
    """huggingface_hub takes a class, not an instance: one bound to this file."""
    return type("FileBar", (_FileBar,), {"progress": progress, "file": file})


@contextlib.contextmanager
def _quiet_hub_logger() -> Iterator[None]:
    """huggingface_hub logs each retry of a dropped connection as a warning: the progress shows it."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection errors: httpx2 (huggingface_hub 2.x), httpx (1.x), requests (0.x)."""
    found = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


@contextlib.contextmanager
def hub_errors(repo_id: str, endpoint: str | None, path: str = "") -> Iterator[None]:
    """Turn the Hub's and the connection's errors into one sentence (no URL noise, never the token)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    what = f"the file {path} of {repo_id}" if path else f"the model {repo_id}"
    hub = endpoint or constants.ENDPOINT
    again = "run the same command again (files already downloaded are kept)"
    try:
        yield
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise DownloadError(
                f"The Hugging Face Hub refused access to {what} (HTTP {status}): check the model id; if the model "
                "is gated or private, accept its terms on its huggingface.co page and pass an access token "
                "(--token-file FILE, or the HF_TOKEN environment variable).") from error
        if status == 404:
            raise DownloadError(f"{what[0].upper()}{what[1:]} was not found on the Hugging Face Hub (HTTP 404): "
                                "check the model id.") from error
        raise DownloadError(f"The Hugging Face Hub answered HTTP {status} for {what}: try again later, then "
                            f"{again}.") from error
    except LocalEntryNotFoundError as error:
        raise DownloadError(f"Could not reach the Hugging Face Hub ({hub}) for {what}: check your internet "
                            f"connection, then {again}.") from error
    except (*_transport_errors(), OSError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "the connection was lost"
        raise DownloadError(f"The download of {what} from {hub} failed ({reason}): {again}.") from error
