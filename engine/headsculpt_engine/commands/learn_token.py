"""`headsculpt learn-token`: learn the `<back-view>` textual-inversion token from photos of the backs
of heads (HeadSculpt Sec. 3.2), for use with `generate --back-view-token FILE`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..devices import DEVICE_HELP
from ..errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "learn-token", help="learn the <back-view> token from photos of the backs of heads",
        description="Textual inversion: learn one new token's embedding from a few dozen photos of the backs "
                    "of heads, with every model weight frozen. The result is a diffusers textual-inversion "
                    "file; pass it to generate/edit with --back-view-token. Running the same command again "
                    "resumes from the checkpoint folder beside the output.")
    parser.add_argument("--images", required=True, metavar="DIR",
                        help="folder of photos (any size and format Pillow reads; at least 3, a few dozen is better)")
    parser.add_argument("--out", required=True, metavar="FILE.safetensors", help="the learned embedding file")
    parser.add_argument("--token", default="<back-view>", help="the new token (default: <back-view>)")
    parser.add_argument("--init-word", default="back",
                        help="a single-token word whose embedding the new token starts from (default: back)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=512,
                        help="training image size (512 for SD 1.5; 32-64 for the tiny models)")
    parser.add_argument("--checkpoint-every", type=int, default=500, metavar="N",
                        help="write a resumable checkpoint and an embedding snapshot every N steps")
    parser.add_argument("--models", default="default",
                        help="'default' (SD 1.5 from your local Hugging Face cache), 'tiny' (tiny random "
                             "models, for smoke runs), or a Stable Diffusion pipeline folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--allow-download", action="store_true",
                        help="let diffusers download missing models from the Hugging Face Hub")
    parser.set_defaults(run=run)


def checkpoint_dir_for(out: Path) -> Path:
    """Checkpoints live beside the output: back-view.safetensors -> back-view-checkpoints/."""
    return out.with_name(out.stem + "-checkpoints")


def run(args: argparse.Namespace) -> int:
    from ..models.textual_inversion import TokenTrainingConfig, load_token_models, train_token
    from ..models.token_images import load_training_images
    from ..stages.loop import RunCallbacks
    from .options import ProgressBars, cancel_on_interrupt

    out = Path(args.out).expanduser()
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out} must end in .safetensors (the format diffusers' textual-inversion loader reads).")
    for name in ("steps", "batch", "resolution", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1.")
    if args.lr <= 0:
        raise InputError("--lr must be positive.")
    cfg = TokenTrainingConfig(token=args.token, init_word=args.init_word, steps=args.steps, lr=args.lr,
                              batch=args.batch, resolution=args.resolution, seed=args.seed,
                              checkpoint_every=args.checkpoint_every)
    images = load_training_images(Path(args.images).expanduser(), cfg.resolution)
    for path, reason in images.skipped:
        print(f"warning: skipped {path}: not an image Pillow can read ({reason})", file=sys.stderr)
    print(f"Learning {cfg.token} from {len(images.paths)} images (init word {cfg.init_word!r}, {cfg.steps} steps)",
          flush=True)
    models, device, models_id = load_token_models(args.models, args.device, args.allow_download)
    checkpoints = checkpoint_dir_for(out)
    bars = ProgressBars()
    try:
        with cancel_on_interrupt() as cancel_requested:
            callbacks = RunCallbacks(on_progress=bars, should_cancel=cancel_requested)
            trainer = train_token(models, images.pixels, cfg, out, checkpoints, callbacks, device, models_id)
    finally:
        bars.close()
    before = trainer.evaluation_loss(trainer.initial_vector)
    after = trainer.evaluation_loss()
    print(f"Denoising loss on the photos (fixed timesteps and noise): {before:.5f} with the init word, "
          f"{after:.5f} with {cfg.token}")
    print(f"Done: {out} (checkpoints and snapshots in {checkpoints}); use it with "
          f"`headsculpt generate --back-view-token {out}`")
    return 0
