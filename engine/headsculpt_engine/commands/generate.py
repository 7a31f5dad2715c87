"""`headsculpt generate`: a textured head avatar from a prompt, on a head prior."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .options import add_keypoint_options, add_run_options, add_style_options

if TYPE_CHECKING:
    from ..config import RunConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate a textured head avatar from a text prompt",
        description="Generate a textured head avatar from a prompt: coarse NeRF, fine DMTet, export (.glb, "
                    "OBJ). Running the same command again resumes an interrupted run.")
    parser.add_argument("--prompt", required=True, help='e.g. "a DSLR portrait of Saul Goodman"')
    add_generation_options(parser)
    parser.add_argument("--stage", choices=("all", "coarse", "fine", "export"), default="all",
                        help="run one stage only (default: all)")
    parser.add_argument("--from-coarse", default=None, metavar="RUN_DIR",
                        help="start the fine stage from the coarse stage of another run")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="run folder (default: out/<prompt>-seed<seed>); an existing run there is resumed")
    parser.set_defaults(run=run)


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """What a generation takes besides its prompt, stages and folder; `headsculpt batch` takes them too."""
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--prior", default="builtin",
                        help="head mesh (OBJ, PLY, GLB) used as the shape prior, or 'builtin' for the "
                             "project's own neutral head (default)")
    parser.add_argument("--landmark-file", default=None, metavar="FILE.npy",
                        help="478 vertex indices (one per MediaPipe landmark) instead of automatic detection")
    add_keypoint_options(parser)
    parser.add_argument("--guidance", choices=("sds", "ssd"), default="sds",
                        help="sds: HeadSculpt's landmark-ControlNet score distillation (default); "
                             "ssd: HeadArtist's self score distillation")
    add_run_options(parser)
    add_style_options(parser)


def load_prior_option(args: argparse.Namespace):
    """The prior that `add_generation_options`' prior options name."""
    from .options import prior_from_args

    return prior_from_args(args.prior, args.landmark_file, args.keypoints, getattr(args, "landmarks", "auto"))


def generation_config(args: argparse.Namespace) -> "RunConfig":
    """The run configuration of the options `add_generation_options` declares (all but the prompt)."""
    from .options import apply_style_options, config_from_args

    cfg = config_from_args(args)
    apply_style_options(cfg, args)
    cfg.negative_prompt = args.negative_prompt
    cfg.guidance.kind = args.guidance
    if args.landmarks == "none":
        cfg.guidance.landmarks = "none"
    return cfg


def run(args: argparse.Namespace) -> int:
    from .. import pipeline
    from ..stages.loop import RunCallbacks
    from .options import ProgressBars, cancel_on_interrupt, slug

    cfg = generation_config(args)
    cfg.prompt = pipeline.validate_prompt(args.prompt)
    run_dir = Path(args.out or Path("out") / f"{slug(cfg.prompt)}-seed{cfg.seed}")
    print(f"Loading the head prior ({args.prior})...", flush=True)
    prior = load_prior_option(args)
    if cfg.guidance.landmarks == "none":
        print(f"Note: {pipeline.NO_LANDMARK_CONTROL}.", flush=True)
    stages = pipeline.STAGES if args.stage == "all" else (args.stage,)
    bars = ProgressBars()
    print(f"Generating \"{cfg.prompt}\" (preset {cfg.preset}, seed {cfg.seed}) into {run_dir}", flush=True)
    try:
        with cancel_on_interrupt() as cancel_requested:
            callbacks = RunCallbacks(on_progress=bars, should_cancel=cancel_requested)
            result_dir = pipeline.generate(cfg, prior, run_dir, callbacks, stages=stages,
                                           coarse_dir=Path(args.from_coarse) / "coarse" if args.from_coarse else None)
    finally:
        bars.close()
    if "export" in stages:
        print(f"Done: {result_dir / 'avatar.glb'} (also OBJ, texture, turntable in {result_dir})")
    else:
        print(f"Done: stage {args.stage} in {run_dir}")
    return 0
