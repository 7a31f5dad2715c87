"""`headsculpt edit`: an edited copy of a generated avatar, from an instruction ("make him older")."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import add_keypoint_options, add_run_options, add_style_options

if TYPE_CHECKING:
    from ..config import RunConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit", help="edit a generated avatar by instruction (identity-aware editing score distillation)",
        description="Edit the avatar of a finished run by an instruction, e.g. \"make him older\": a new fine "
                    "stage starts from that run's mesh and texture and is guided by HeadSculpt's IESD. The "
                    "parent run is left untouched; running the same command again resumes an interrupted edit.")
    parser.add_argument("--from", dest="parent", required=True, metavar="RUN_DIR",
                        help="the run folder of the avatar to edit (a finished `headsculpt generate`)")
    parser.add_argument("--instruction", required=True, help='what to change, e.g. "make him older"')
    parser.add_argument("--edit-scale", type=float, default=None, metavar="W_E",
                        help="w_e of Eq. 7 in [0, 1]: 0 keeps the avatar, 1 follows only the instruction "
                             "(default 0.6, the paper's)")
    parser.add_argument("--mode", choices=("iesd", "b3", "b5"), default="iesd",
                        help="iesd: HeadSculpt's editing (default); b3: plain SDS with the instruction added to "
                             "the prompt (the paper's ablation B3); b5: IESD with w_e = 1 (ablation B5)")
    parser.add_argument("--guidance", choices=("parent", "sds", "ssd"), default="parent",
                        help="score distillation for the edit: that of the parent run (default), sds, or ssd "
                             "(HeadArtist: vertex offsets with fixed SDF, then texture)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="run folder of the edit (default: <RUN_DIR>-<instruction>); an existing edit there "
                             "is resumed")
    add_keypoint_options(parser, with_mode=False)
    # The preset defaults to the parent's, so an edit of a draft run is a draft edit.
    add_run_options(parser, default_preset=None)
    add_style_options(parser)
    parser.add_argument("--no-parent-styles", dest="parent_styles", action="store_false",
                        help="leave out the parent run's LoRAs and image prompt (by default an edit keeps them "
                             "unless --lora or --image chooses others)")
    parser.set_defaults(run=run)


def edit_config(args: argparse.Namespace, parent_record: dict[str, Any]) -> tuple["RunConfig", list[str]]:
    """The edit's run configuration, and a line for each style it inherits from the parent run."""
    from .options import apply_style_options, config_from_args

    if args.preset is None:
        args.preset = parent_record.get("preset") or "paper"
    cfg = config_from_args(args)
    apply_style_options(cfg, args)
    cfg.guidance.edit_mode = args.mode
    if args.edit_scale is not None:
        cfg.guidance.edit_scale = args.edit_scale
    cfg.guidance.kind = (parent_record.get("guidance") or "sds") if args.guidance == "parent" else args.guidance
    return cfg, inherit_styles(cfg, args, parent_record)


def unchanged_file(entry: dict[str, Any], what: str, flag: str) -> str:
    """The file a parent run's record names (`file`, `sha256`), checked to be still the one the parent was
    made with: an edit on another LoRA or image would not keep the avatar's style, so it gets a sentence."""
    from ..errors import InputError
    from ..models.lora import sha256_file

    path = Path(entry["file"])
    advice = f"pass {flag} to choose it anew, or --no-parent-styles to leave the parent's LoRAs and image prompt out"
    if not path.is_file():
        raise InputError(f"The parent run's {what} {path} is no longer there; {advice}.")
    if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
        raise InputError(f"The parent run's {what} {path} has changed since the avatar was made, so the edit "
                         f"would not keep its style; {advice}.")
    return str(path)


def inherit_styles(cfg: "RunConfig", args: argparse.Namespace, parent_record: dict[str, Any]) -> list[str]:
    """The parent's LoRAs and image prompt where the user gave none of their own: an edit keeps the style
    of the avatar it changes. They are the files the parent's run.json names (a Hub id's LoRA as the
    cache held it), whatever folder the edit runs from, each checked against the hash recorded then."""
    lines: list[str] = []
    if not args.parent_styles:
        return lines
    loras = parent_record.get("loras") or []
    if loras and not args.loras:
        cfg.models.loras = tuple(unchanged_file(lora, "LoRA", "--lora") for lora in loras)
        cfg.models.lora_scales = tuple(float(lora["scale"]) for lora in loras)
        lines += [f"LoRA {source} at scale {scale:g}" for source, scale in zip(cfg.models.loras, cfg.models.lora_scales)]
    image = parent_record.get("image_prompt")
    if image and not args.image:
        cfg.guidance.image = unchanged_file(image, "image prompt", "--image")
        cfg.guidance.image_scale = float(parent_record["config"]["guidance"]["image_scale"])
        lines.append(f"image prompt {image['file']} at scale {cfg.guidance.image_scale:g}")
    return lines


def run(args: argparse.Namespace) -> int:
    from .. import pipeline
    from ..prior.keypoints import read_keypoint_file
    from ..stages.loop import RunCallbacks
    from .options import ProgressBars, cancel_on_interrupt, slug

    parent = Path(args.parent).expanduser()
    parent_record = pipeline.parent_record(parent)
    instruction = pipeline.validate_prompt(args.instruction, what="instruction")
    keypoints = read_keypoint_file(args.keypoints) if args.keypoints else None
    cfg, inherited = edit_config(args, parent_record)
    run_dir = Path(args.out) if args.out else parent.with_name(f"{parent.name}-{slug(instruction, 32)}")
    bars = ProgressBars()
    print(f"Editing {parent} with \"{instruction}\" ({args.mode}, preset {cfg.preset}) into {run_dir}", flush=True)
    if inherited:
        print(f"Inherited from the parent run: {'; '.join(inherited)}. Pass --lora or --image to choose others, "
              "or --no-parent-styles to leave them out.", flush=True)
    try:
        with cancel_on_interrupt() as cancel_requested:
            callbacks = RunCallbacks(on_progress=bars, should_cancel=cancel_requested)
            result_dir = pipeline.edit(parent, instruction, cfg, run_dir, callbacks, keypoints=keypoints)
    finally:
        bars.close()
    print(f"Done: {result_dir / 'avatar.glb'} (also OBJ, texture, turntable in {result_dir})")
    return 0
