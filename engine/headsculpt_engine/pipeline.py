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
from .devices import resolve_device
from .errors import InputError
from .stages.loop import RunCallbacks

if TYPE_CHECKING:
    import torch

    from .prior import HeadPrior

STAGES = ("coarse", "fine", "export")
MAX_PROMPT_CHARS = 500
# What the run record (and the CLI, and the add-on's panel) says of a run with guidance.landmarks "none".
NO_LANDMARK_CONTROL = "no landmark control: expect weaker view consistency"


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


def _start_record(run_dir: Path, cfg: RunConfig, prior: "HeadPrior", kind: str, **identity: Any) -> RunRecord:
    """Open (or resume) `run_dir/run.json`. A run folder holds one run: resuming it with other settings,
    or (for an edit) another parent or instruction, is refused rather than mixed."""
    record = RunRecord(run_dir)
    # Compared as run.json holds them (JSON has lists where the config has tuples).
    expected = json.loads(json.dumps({"config": cfg.to_dict(), **identity}))
    if record.data.get("config") and any(record.data.get(key) != value for key, value in expected.items()):
        raise InputError(f"{run_dir} holds a run with other settings; resume it with the same settings "
                         "or choose another output folder.")
    if not (run_dir / "prior").exists():
        prior.save(run_dir / "prior")
    record.update(kind=kind, prompt=cfg.prompt, negative_prompt=cfg.negative_prompt,
                  seed=cfg.seed, preset=cfg.preset, guidance=cfg.guidance.kind, config=cfg.to_dict(),
                  prior={"hash": prior.content_hash, "is_flame": prior.is_flame,
                         # The axis turn the orientation search applied (identity: the file's own axes).
                         "rotation": prior.transform.as_dict()["rotation"]}, versions=library_versions(),
                  created_at=record.data.get("created_at", time.time()), status="running",
                  landmark_control=landmark_control(cfg), **identity)
    return record


def landmark_control(cfg: RunConfig) -> str:
    """How the run's views are steered: the prior's landmark maps, or nothing (and what that costs)."""
    return NO_LANDMARK_CONTROL if cfg.guidance.landmarks == "none" else "landmark maps of the prior"


def _check_image_prompt(cfg: RunConfig) -> Path | None:
    """The image prompt's file, checked readable (a sentence otherwise), or None without one."""
    from .guidance.image_prompt import read_image

    if not cfg.guidance.image:
        return None
    read_image(cfg.guidance.image)
    return Path(cfg.guidance.image).expanduser().resolve()


def _record_conditioning(record: RunRecord, models, image: Path | None) -> None:
    """Name the style LoRAs and the image prompt in run.json, each with its sha256."""
    from .models.lora import sha256_file

    loras = [lora.record() for lora in models.loras]
    picture = {"file": str(image), "sha256": sha256_file(image)} if image is not None else None
    record.update(loras=loras, image_prompt=picture)


def _choose_ssd_models(cfg: RunConfig) -> None:
    """HeadArtist's SD 2.1-base for SSD when it is cached (guidance/ssd_models.py); a note otherwise."""
    import logging

    from .guidance.ssd_models import ssd_models

    cfg.models, note = ssd_models(cfg.models, cfg.guidance.kind)
    if note:
        logging.getLogger("headsculpt").warning(note)


def generate(cfg: RunConfig, prior: "HeadPrior", run_dir: Path, callbacks: RunCallbacks | None = None,
             stages: Iterable[str] = STAGES, coarse_dir: Path | None = None) -> Path:
    """Run (or resume) the given stages in `run_dir`; return the directory with the exported avatar.

    `coarse_dir` lets a fine stage start from another run's coarse stage.
    """
    from .guidance.factory import build_guidance
    from .models.loading import load_diffusion_models
    from .stages.coarse import run_coarse
    from .stages.fine import run_fine
    from .stages.ssd import run_ssd

    stages = tuple(stages)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise InputError(f"Unknown stage(s) {', '.join(sorted(unknown))}: choose from {', '.join(STAGES)}.")
    cfg.prompt = validate_prompt(cfg.prompt)
    callbacks = callbacks or RunCallbacks()
    device = resolve_device(cfg.device)

    ssd = cfg.guidance.kind == "ssd"
    if ssd and "coarse" in stages:
        # HeadArtist distils a DMTet directly from the parametric head, with no NeRF before it: its
        # geometry phase shapes the mesh from normal maps, and a coarse NeRF distilled by SDS would only
        # replace the prior's shape by one that SSD did not make. SSD runs start DMTet from the prior.
        if stages == ("coarse",):
            raise InputError("SSD guidance has no coarse stage; run the fine stage (geometry, then texture).")
        stages = tuple(name for name in stages if name != "coarse")

    # Models first: a missing model, a LoRA for another architecture or an unreadable image prompt
    # fails before anything is written.
    _choose_ssd_models(cfg)
    guided = bool({"coarse", "fine"} & set(stages))
    image = _check_image_prompt(cfg) if guided else None
    models = load_diffusion_models(cfg.models, device, with_face=cfg.guidance.landmarks != "none",
                                   with_image_prompt=image is not None) if guided else None
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = _start_record(run_dir, cfg, prior, kind="generate")
    if models is not None:  # an export alone keeps what the training stages recorded
        _record_conditioning(record, models, image)
    timings: dict[str, float] = dict(record.data.get("timings", {}))

    _seed_everything(cfg.seed)
    guidance = build_guidance(cfg, models) if models is not None else None

    coarse_dir = Path(coarse_dir) if coarse_dir else run_dir / "coarse"
    if "coarse" in stages:
        result = run_coarse(cfg, prior, guidance, coarse_dir, callbacks, device)
        timings["coarse"] = result.timings["seconds"]
        record.update(timings=timings)
    fine_result = None
    if ssd and "fine" in stages:
        fine_result, stage_timings = run_ssd(cfg, prior, guidance, run_dir, callbacks, device)
        timings.update(stage_timings)
        record.update(timings=timings)
    elif "fine" in stages or "export" in stages:
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
        _export(fine_result, prior, cfg, record, result_dir, timings)
    record.update(timings=timings, status="done" if "export" in stages else "partial")
    return result_dir


def _export(fine_result, prior: "HeadPrior", cfg: RunConfig, record: RunRecord, result_dir: Path,
            timings: dict[str, float]) -> None:
    """Export the avatar with its description (avatar.json): what run.json says of it, and the config."""
    from .mesh.export import export_avatar

    started = time.perf_counter()
    description = {key: record.data.get(key) for key in
                   ("kind", "prompt", "negative_prompt", "seed", "preset", "guidance", "prior", "versions",
                    "parent", "instruction", "edit_mode", "loras", "image_prompt")}
    description.update(config=cfg.to_dict(), timings=timings)
    export_avatar(fine_result, prior, cfg.export, result_dir, description)
    timings["export"] = time.perf_counter() - started
    # Faces, components, watertightness and the decimation's deviation, as avatar.json has them.
    record.update(mesh=json.loads((result_dir / "avatar.json").read_text())["export"]["mesh"])


EDIT_MODES = ("iesd", "b3", "b5")


def parent_record(parent_run_dir: Path) -> dict[str, Any]:
    """The run.json of a finished run, as the parent of an edit; InputError when the folder is not one."""
    parent = Path(parent_run_dir)
    path = parent / "run.json"
    if not path.is_file():
        raise InputError(f"{parent} is not a run folder (it has no run.json); pass the folder a generation wrote.")
    data = json.loads(path.read_text())
    if data.get("status") != "done" or not (parent / "fine" / "checkpoint.pt").is_file() \
            or not (parent / "prior").is_dir() or "config" not in data:
        raise InputError(f"The run in {parent} is not finished; finish it (run its command again to resume) "
                         "before editing it.")
    return data


def edit_prompt(prompt: str, instruction: str) -> str:
    """The instruction-altered prompt of ablation B3 and of SSD edits: guidance from text alone has no
    pre-edit image to apply an instruction to, so the instruction joins the prompt."""
    return f"{prompt}, {instruction}"


def edit(parent_run_dir: Path, instruction: str, cfg: RunConfig, run_dir: Path,
         callbacks: RunCallbacks | None = None, keypoints: "dict[str, Any] | None" = None) -> Path:
    """Edit the avatar of the finished run `parent_run_dir` by `instruction` into `run_dir` (resumable);
    return the directory with the exported, edited avatar.

    cfg.guidance.edit_mode picks IESD (HeadSculpt Eq. 7, w_e = cfg.guidance.edit_scale), or the ablations
    B3 (plain SDS with the instruction-altered prompt) and B5 (w_e = 1). With cfg.guidance.kind "ssd" the
    edit is HeadArtist's: SSD with the instruction-altered prompt, vertex offsets on the fixed SDF, then
    texture. The prompt, the prior and the avatar's representation come from the parent; `keypoints`
    (prior/keypoints.py, in the prior's own coordinates) give the edit guided landmarks on that prior,
    e.g. for a parent made without landmark control.
    """
    from .guidance.factory import build_edit_guidance, build_guidance
    from .models.loading import load_diffusion_models
    from .prior import HeadPrior
    from .prior.keypoints import keypoint_embedding
    from .stages.edit import run_edit

    parent = Path(parent_run_dir).resolve()
    data = parent_record(parent)
    instruction = validate_prompt(instruction, what="instruction")
    g = cfg.guidance
    if g.edit_mode not in EDIT_MODES:
        raise InputError(f"Unknown edit mode {g.edit_mode!r}: choose one of {', '.join(EDIT_MODES)}.")
    if g.kind == "ssd" and g.edit_mode != "iesd":
        raise InputError(f"Edit mode {g.edit_mode} is an ablation of IESD and uses SDS guidance; drop the mode "
                         "or use SDS guidance.")
    if g.edit_mode == "b5":
        g.edit_scale = 1.0
    if not 0.0 <= g.edit_scale <= 1.0:
        raise InputError(f"The edit scale w_e is {g.edit_scale}; choose a value from 0 (keep the avatar) to 1 "
                         "(follow only the instruction).")
    parent_cfg = RunConfig.from_dict(data["config"])
    cfg.prompt, cfg.negative_prompt = parent_cfg.prompt, parent_cfg.negative_prompt
    g.landmarks = parent_cfg.guidance.landmarks  # an edit steers its views as its parent did
    # The edit goes on training the parent's avatar, so it keeps its representation: the tet grid and
    # the colour field (whose architecture the coarse section describes).
    cfg.coarse = parent_cfg.coarse
    cfg.fine.tet_resolution = parent_cfg.fine.tet_resolution
    cfg.fine.max_offset_cells = parent_cfg.fine.max_offset_cells  # scales the stored offsets
    callbacks = callbacks or RunCallbacks()
    run_dir = Path(run_dir)
    if run_dir.resolve() == parent:
        raise InputError("The edit's output folder is its parent run; choose another folder (an edit never "
                         "overwrites the avatar it starts from).")
    prior = HeadPrior.load(parent / "prior")
    if keypoints is not None:  # before anything is written: bad keypoints are refused first
        prior.landmarks = keypoint_embedding(prior.vertices, prior.faces,
                                             {name: prior.transform.to_normalised(p) for name, p in keypoints.items()})
        g.landmarks = "prior"
    device = resolve_device(cfg.device)
    method = "ssd" if g.kind == "ssd" else g.edit_mode
    iesd = method in ("iesd", "b5")
    # Models first, as in `generate`: a missing model, a LoRA for another architecture or an unreadable
    # image prompt fails before the edit's folder is written.
    _choose_ssd_models(cfg)
    image = _check_image_prompt(cfg)
    models = load_diffusion_models(cfg.models, device, with_ip2p=iesd, with_face=g.landmarks != "none",
                                   with_image_prompt=image is not None)
    run_dir.mkdir(parents=True, exist_ok=True)

    record = _start_record(run_dir, cfg, prior, kind="edit", parent=str(parent), parent_prompt=data.get("prompt"),
                           instruction=instruction, edit_mode=method)
    timings: dict[str, float] = dict(record.data.get("timings", {}))
    _record_conditioning(record, models, image)

    _seed_everything(cfg.seed)
    if iesd:
        guidance = build_edit_guidance(cfg, models, cfg.prompt, instruction, g.edit_scale)
    else:
        guidance = build_guidance(cfg, models, prompt=edit_prompt(cfg.prompt, instruction))
    fine_result, stage_timings = run_edit(cfg, prior, guidance, parent / "fine", run_dir, callbacks, device,
                                          reference=iesd)
    timings.update(stage_timings)
    record.update(timings=timings)
    _export(fine_result, prior, cfg, record, run_dir / "result", timings)
    record.update(timings=timings, status="done")
    return run_dir / "result"
