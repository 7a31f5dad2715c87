"""A whole generation: prior -> coarse NeRF -> fine DMTet -> textured export, in one run directory.

Calling `generate` again on the same run directory resumes: each stage continues from its checkpoint,
finished stages are loaded rather than retrained. The CLI and the server both call this.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from . import __version__
from .config import RunConfig
from .errors import InputError
from .stages.loop import RunCallbacks

if TYPE_CHECKING:
    import torch

    from .prior import HeadPrior

STAGES = ("coarse", "fine", "export")
MAX_PROMPT_CHARS = 500


def resolve_device(name: str) -> "torch.device":
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but no CUDA GPU is visible to PyTorch; use --device cpu or auto.")
    return torch.device(name)


def validate_prompt(prompt: str, what: str = "prompt") -> str:
    text = (prompt or "").strip()
    if not text:
        raise InputError(f"The {what} is empty: describe the head to make, e.g. \"a DSLR portrait of Saul Goodman\".")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"The {what} has {len(text)} characters; keep it to {MAX_PROMPT_CHARS} or fewer.")
    return text


def library_versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    return {"headsculpt_engine": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


class RunRecord:
    """`run.json`: what a run is (prompt, seed, config, prior, parent) and how it went (timings)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def generate(cfg: RunConfig, prior: "HeadPrior", run_dir: Path, callbacks: RunCallbacks | None = None,
             stages: Iterable[str] = STAGES, coarse_dir: Path | None = None) -> Path:
    """Run (or resume) the given stages in `run_dir`; return the directory with the exported avatar.

    `coarse_dir` lets a fine stage start from another run's coarse stage.
    """
    from .guidance.factory import build_guidance
    from .mesh.export import export_avatar
    from .models.loading import load_diffusion_models
    from .stages.coarse import run_coarse
    from .stages.fine import run_fine

    stages = tuple(stages)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise InputError(f"Unknown stage(s) {', '.join(sorted(unknown))}: choose from {', '.join(STAGES)}.")
    cfg.prompt = validate_prompt(cfg.prompt)
    callbacks = callbacks or RunCallbacks()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)

    record = RunRecord(run_dir)
    if record.data.get("config") and record.data["config"] != cfg.to_dict():
        raise InputError(f"{run_dir} holds a run with other settings; resume it with the same settings "
                         "or choose another output folder.")
    if not (run_dir / "prior").exists():
        prior.save(run_dir / "prior")
    record.update(kind=record.data.get("kind", "generate"), prompt=cfg.prompt, negative_prompt=cfg.negative_prompt,
                  seed=cfg.seed, preset=cfg.preset, guidance=cfg.guidance.kind, config=cfg.to_dict(),
                  prior={"hash": prior.content_hash, "is_flame": prior.is_flame}, versions=library_versions(),
                  created_at=record.data.get("created_at", time.time()), status="running")
    timings: dict[str, float] = dict(record.data.get("timings", {}))

    _seed_everything(cfg.seed)
    models = load_diffusion_models(cfg.models, device) if {"coarse", "fine"} & set(stages) else None
    guidance = build_guidance(cfg, models) if models is not None else None

    coarse_dir = Path(coarse_dir) if coarse_dir else run_dir / "coarse"
    if "coarse" in stages:
        result = run_coarse(cfg, prior, guidance, coarse_dir, callbacks, device)
        timings["coarse"] = result.timings["seconds"]
        record.update(timings=timings)
    fine_result = None
    if "fine" in stages or "export" in stages:
        if "fine" not in stages and not (run_dir / "fine" / "checkpoint.pt").exists():
            raise InputError(f"{run_dir} has no finished fine stage to export; run the fine stage first.")
        # Export alone passes no guidance: the finished fine checkpoint is loaded, not trained.
        fine_result = run_fine(cfg, prior, guidance, run_dir / "fine", callbacks, device,
                               coarse_dir=coarse_dir if (coarse_dir / "checkpoint.pt").exists() else None)
        if "fine" in stages:
            timings["fine"] = fine_result.timings["seconds"]
            record.update(timings=timings)
    result_dir = run_dir / "result"
    if "export" in stages:
        started = time.perf_counter()
        description = {key: record.data.get(key) for key in
                       ("kind", "prompt", "negative_prompt", "seed", "preset", "guidance", "prior", "versions",
                        "parent", "instruction")}
        description.update(config=cfg.to_dict(), timings=timings)
        export_avatar(fine_result, prior, cfg.export, result_dir, description)
        timings["export"] = time.perf_counter() - started
    record.update(timings=timings, status="done" if "export" in stages else "partial")
    return result_dir
