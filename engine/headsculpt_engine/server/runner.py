"""The work a job does: build the run configuration from the job's request and the server's options,
then call the pipeline on the job folder (which resumes from its checkpoints when called again)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_BASE_MODEL, PRESETS, RunConfig, preset_config
from ..errors import InputError
from ..stages.loop import RunCallbacks
from .loras import DEFAULT_CACHE_BYTES as DEFAULT_LORA_CACHE_BYTES
from .loras import DEFAULT_MAX_BYTES as DEFAULT_LORA_MAX_BYTES
from .store import JobRecord
from .uploads import DEFAULT_MEMORY_BYTES


@dataclass
class ServerOptions:
    """What `headsculpt serve` was started with, beyond host and port."""

    data_dir: Path
    # "tiny", "default", or a folder / model id for the base model; None: what each job's preset implies
    models: str | None = None
    preset_limit: str = "paper"  # the heaviest preset this server accepts
    back_view_token_file: str = ""
    cpu_offload: bool = False
    # Host header names a loopback server answers to; empty: no check (remote servers, in-process tests).
    allowed_hosts: tuple[str, ...] = ()
    prior_cache_bytes: int = 2048 * 1024 * 1024  # uploaded priors beyond this: least recently used go
    upload_timeout_s: float = 600.0  # checking and preparing one uploaded prior
    upload_memory_bytes: int = DEFAULT_MEMORY_BYTES  # its memory cap
    lora_max_bytes: int = DEFAULT_LORA_MAX_BYTES  # the largest LoRA file POST /v1/loras takes
    lora_cache_bytes: int = DEFAULT_LORA_CACHE_BYTES  # uploaded LoRAs beyond this: least recently used go
    # `serve --ray ADDRESS`: jobs run on that Ray cluster (ray_workers.py); empty: the local worker.
    ray_address: str = ""

    def allowed_presets(self) -> tuple[str, ...]:
        """PRESETS runs from heaviest to lightest: the limit and everything lighter."""
        return PRESETS[PRESETS.index(self.preset_limit):]

    def models_label(self) -> str:
        if self.models is None:
            return f"{DEFAULT_BASE_MODEL} (tiny models for tiny-preset jobs)"
        return DEFAULT_BASE_MODEL if self.models == "default" else self.models


# What an edit job keeps of its parent's request, whatever it says: the instruction changes that avatar.
EDIT_KEEPS = ("prompt", "negative_prompt", "prior_id", "guidance")


def edit_request(request: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
    """An edit's request as the job store keeps it: the parent's prompt, prior and guidance, and the
    parent's LoRAs and image prompt where the edit names none of its own, each on its own (as
    `headsculpt edit` does): an edit keeps the style of the avatar it changes, unless it says
    `parent_styles: false` (as `headsculpt edit --no-parent-styles`)."""
    edit = dict(request, **{key: parent.get(key, "") for key in EDIT_KEEPS})
    if not edit.get("parent_styles", True):
        return edit
    if not edit.get("loras"):
        edit["loras"] = parent.get("loras") or []
    if not edit.get("image_id") and parent.get("image_id"):
        edit["image_id"], edit["image_scale"] = parent["image_id"], parent.get("image_scale", 1.0)
    return edit


def job_config(request: dict[str, Any], options: ServerOptions) -> RunConfig:
    from ..models.loading import models_config_from_cli

    cfg = preset_config(request["preset"])
    # As in the CLI: models the server was started with win over what the job's preset implies.
    if options.models is not None:
        cfg.models = models_config_from_cli(options.models, cfg.models)
    cfg.models.cpu_offload = options.cpu_offload
    cfg.models.back_view_token_file = options.back_view_token_file
    cfg.prompt = request["prompt"]
    cfg.negative_prompt = request.get("negative_prompt", "")
    cfg.seed = int(request["seed"])
    cfg.guidance.kind = request.get("guidance", "sds")
    cfg.guidance.landmarks = request.get("landmarks") or "prior"
    if request["kind"] == "edit":
        cfg.guidance.edit_scale = float(request["edit_scale"])
    _apply_styles(cfg, request, options)
    return cfg


def _apply_styles(cfg: RunConfig, request: dict[str, Any], options: ServerOptions) -> None:
    """LoRAs (uploaded, or by Hub id from the model cache) and the uploaded image, as files the engine
    chose itself."""
    from .images import ImageStore
    from .loras import lora_path

    loras = request.get("loras") or []
    cfg.models.loras = tuple(str(lora_path(options.data_dir, lora["id"])) for lora in loras)
    cfg.models.lora_scales = tuple(float(lora["scale"]) for lora in loras)
    if request.get("image_id"):
        image = ImageStore(options.data_dir).path(request["image_id"])
        if image is None:
            raise InputError("The job's image prompt was removed from the engine; upload it again and resubmit.")
        cfg.guidance.image = str(image)
        cfg.guidance.image_scale = float(request.get("image_scale", 1.0))


class PipelineJobs:
    """`Worker(run_job=PipelineJobs(...))`: runs generate and edit jobs with the engine's pipeline."""

    def __init__(self, jobs_dir: Path, priors_root: Path, options: ServerOptions):
        # Folders, not the job store: a Ray worker runs this too, and never opens the job table.
        self.jobs_dir, self.priors_root, self.options = jobs_dir, priors_root, options

    def __call__(self, job: JobRecord, run_dir: Path, callbacks: RunCallbacks) -> None:
        from .. import pipeline

        cfg = job_config(job.request, self.options)
        if job.kind == "generate":
            from .priors import load_engine_prior

            prior_dir = self.priors_root / job.request["prior_id"] / "prior"
            if not prior_dir.is_dir():
                raise InputError("The job's prior was removed from the engine; upload it again and resubmit.")
            pipeline.generate(cfg, load_engine_prior(prior_dir), run_dir, callbacks)
        else:
            parent_dir = self.jobs_dir / job.request["parent_job_id"]
            if not parent_dir.is_dir():
                raise InputError("The job this edit starts from was deleted; generate it again first.")
            pipeline.edit(parent_dir, job.request["instruction"], cfg, run_dir, callbacks)
