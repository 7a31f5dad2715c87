"""`headsculpt make-tiny-models DIR`: tiny random-weight diffusion models for tests and CPU smoke runs."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "make-tiny-models", help="write tiny random-weight diffusion models (real diffusers layout)",
        description="Write tiny random-weight models in the diffusers layout (UNet, VAE, CLIP text encoder "
                    "and tokenizer, scheduler, face-landmark and InstructPix2Pix ControlNets), and a tiny CLIP (text and "
                    "vision) in clip/ for `headsculpt eval`. The same seed gives the same files. Pass the folder "
                    "to any --models option, and DIR/clip to `eval --clip`.")
    parser.add_argument("dir", type=Path, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..models.tiny import make_tiny_models

    out = make_tiny_models(args.dir, seed=args.seed)
    print(f"tiny models written to {out}")
    return 0
