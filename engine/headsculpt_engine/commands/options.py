"""Options several commands share (models, preset, overrides, device), and the terminal progress bar.

Nothing heavy is imported at module level: `register` functions run for `headsculpt --help`.
"""
from __future__ import annotations

import argparse
import re
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..config import PRESETS, RunConfig, apply_overrides, preset_config
from ..devices import DEVICE_HELP
from ..errors import InputError


def add_run_options(parser: argparse.ArgumentParser, default_preset: str = "paper") -> None:
    parser.add_argument("--models", default=None,
                        help="'default' (the papers' Hugging Face models, downloaded when missing), 'tiny' "
                             "(tiny random models for offline smoke runs), or a folder laid out like "
                             "`headsculpt make-tiny-models` writes; when not given, what the preset implies "
                             "(tiny for --preset tiny, else default)")
    parser.add_argument("--preset", default=default_preset, choices=PRESETS,
                        help="quality preset: paper (the papers' settings), standard, draft, tiny (CPU smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--back-view-token", metavar="FILE", default="",
                        help="a <back-view> textual-inversion file from `headsculpt learn-token`")
    parser.add_argument("--offline", action="store_true",
                        help="never download: stop when a model is not in the Hugging Face cache (as "
                             "HF_HUB_OFFLINE=1 does); without it, missing models are downloaded first, sizes shown")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override any setting, e.g. --set coarse.iterations=70000 (repeatable)")


class _AddLora(argparse.Action):
    """`--lora X`: a style LoRA at scale 1 until a `--lora-scale` after it says otherwise."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.loras = [*(getattr(namespace, "loras", None) or []), [values, 1.0]]


class _LoraScale(argparse.Action):
    """`--lora-scale S`: the scale of the `--lora` just before it."""

    def __call__(self, parser, namespace, values, option_string=None):
        if not getattr(namespace, "loras", None):
            parser.error("--lora-scale must follow the --lora it scales")
        namespace.loras[-1][1] = values


def add_style_options(parser: argparse.ArgumentParser) -> None:
    """StyleAvatar3D's styles and image prompt: `--lora` (repeatable) and `--image`."""
    parser.add_argument("--lora", action=_AddLora, dest="loras", default=[], metavar="FILE_OR_ID",
                        help="a style LoRA for the UNet: a .safetensors file, a folder with "
                             "pytorch_lora_weights.safetensors, or a Hugging Face id (repeatable)")
    parser.add_argument("--lora-scale", action=_LoraScale, type=float, metavar="S",
                        help="the scale of the --lora before it (default 1; 0 leaves the UNet as it is)")
    parser.add_argument("--image", default="", metavar="FILE",
                        help="a reference image as prompt (IP-Adapter, h94/IP-Adapter); front and side views "
                             "follow it, back views do not")
    parser.add_argument("--image-scale", type=float, default=1.0, metavar="S",
                        help="the IP-Adapter scale of the image prompt on front and side views (default 1)")


def apply_style_options(cfg: RunConfig, args: argparse.Namespace) -> None:
    """Put the `add_style_options` values into the run configuration."""
    cfg.models.loras = tuple(source for source, _ in args.loras)
    cfg.models.lora_scales = tuple(float(scale) for _, scale in args.loras)
    if args.image:
        cfg.guidance.image = str(Path(args.image).expanduser().resolve())
        cfg.guidance.image_scale = args.image_scale


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run configuration the shared options describe."""
    from ..models.download import hub_offline
    from ..models.loading import models_config_from_cli

    try:
        cfg = preset_config(args.preset)
        cfg.seed, cfg.device = args.seed, args.device
        if args.models is not None:  # a choice the user made wins over what the preset implies
            cfg.models = models_config_from_cli(args.models, cfg.models)
        if args.back_view_token:
            token_file = Path(args.back_view_token).expanduser()
            if not token_file.is_file():
                raise InputError(f"The back-view token file {token_file} does not exist.")
            cfg.models.back_view_token_file = str(token_file.resolve())
        cfg.models.allow_download = not (args.offline or hub_offline())
        return apply_overrides(cfg, args.overrides)
    except ValueError as error:
        raise InputError(str(error)) from error


def slug(text: str, limit: int = 48) -> str:
    """A folder-name-safe short form of a prompt."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (words[:limit].rstrip("-")) or "run"


@contextmanager
def cancel_on_interrupt() -> Iterator[callable]:
    """Ctrl-C asks the running stage to stop at the next iteration (it checkpoints first); a second
    Ctrl-C interrupts at once."""
    requested = {"flag": False}

    def handler(signum, frame):
        if requested["flag"]:
            raise KeyboardInterrupt
        requested["flag"] = True
        print("\nStopping after this iteration (the run keeps its checkpoint; run the same command to resume)...",
              flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: requested["flag"]
    finally:
        signal.signal(signal.SIGINT, previous)


class ProgressBars:
    """One tqdm bar per stage, fed by the stages' progress callbacks."""

    def __init__(self) -> None:
        self.bar = None
        self.stage = None

    def __call__(self, progress) -> None:
        from tqdm import tqdm

        if progress.stage != self.stage:
            self.close()
            self.stage = progress.stage
            self.bar = tqdm(total=progress.total, desc=f"{progress.stage:>7}", unit="it", dynamic_ncols=True,
                            initial=progress.iteration)
        self.bar.n = progress.iteration
        if progress.loss is not None:
            self.bar.set_postfix(loss=f"{progress.loss:.4g}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def add_keypoint_options(parser: argparse.ArgumentParser, with_mode: bool = True) -> None:
    """`--keypoints` (guided landmarks) and, with `with_mode`, `--landmarks none` (no landmark control)."""
    parser.add_argument("--keypoints", default=None, metavar="FILE.json",
                        help="six keypoints marked on the prior (outer eye corners, nose tip, mouth corners, "
                             "chin; see the README): the built-in head's landmark layout is carried onto the "
                             "mesh through them, for heads with no face MediaPipe can find")
    if with_mode:
        parser.add_argument("--landmarks", choices=("auto", "none"), default="auto",
                            help="auto: landmarks from --keypoints, --landmark-file or detection (default); "
                                 "none: no landmark control, the plain diffusion model with view prompts "
                                 "(expect weaker view consistency)")


def prior_from_args(prior: str, landmark_file: "str | Path | None", keypoints: str | None, landmarks: str = "auto",
                    progress: "Callable[[str], None] | None" = None):
    """The head prior the options name; InputError for combinations that contradict each other."""
    from ..prior import builtin_prior, load_prior
    from ..prior.keypoints import read_keypoint_file

    given = [flag for flag, value in (("--landmark-file", landmark_file), ("--keypoints", keypoints)) if value]
    if len(given) > 1:
        raise InputError("Give either --landmark-file or --keypoints, not both.")
    if given and landmarks == "none":
        raise InputError(f"--landmarks none generates without landmark control; drop {given[0]}.")
    if prior == "builtin":
        if given:
            raise InputError(f"The built-in head has its own landmarks; {given[0]} goes with a mesh given by --prior.")
        return builtin_prior()
    return load_prior(Path(prior).expanduser(), landmark_file=landmark_file, detect_landmarks=landmarks != "none",
                      keypoints=read_keypoint_file(keypoints) if keypoints else None, progress=progress)
