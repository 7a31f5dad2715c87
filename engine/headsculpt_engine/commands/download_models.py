"""`headsculpt download-models`: fetch the files the engine loads into the Hugging Face cache."""
from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from ..errors import HeadSculptError, InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "download-models", help="download the diffusion models into the Hugging Face cache",
        description="Download the models the engine loads into the standard Hugging Face cache (HF_HOME or "
                    "HF_HUB_CACHE): only the files it loads, as half-precision safetensors where a repository "
                    "has them. Sizes are shown first; files already in the cache are skipped, so running it "
                    "again finishes an interrupted download.")
    parser.add_argument("--models", nargs="+", default=["default"], metavar="default|ID",
                        help="'default' (Stable Diffusion 1.5, the face-landmark and InstructPix2Pix "
                             "ControlNets), or Hugging Face ids (default: default)")
    parser.add_argument("--dry-run", action="store_true", help="list the files and sizes, download nothing")
    parser.add_argument("--token-file", metavar="FILE", default=None,
                        help="a file holding a Hugging Face access token, for gated or private models "
                             "(default: the HF_TOKEN environment variable, or your `hf auth login`)")
    parser.add_argument("--progress", choices=("bars", "json"), default="bars",
                        help="bars: a size table and progress bars (default); json: one JSON object a line on "
                             "stdout (plan, progress, done or error) for programs such as the Blender add-on")
    parser.set_defaults(run=run)


def read_token(token_file: str | None) -> str | None:
    """The token from --token-file, else HF_TOKEN; None lets huggingface_hub use a stored login."""
    if token_file is None:
        return os.environ.get("HF_TOKEN") or None
    path = Path(token_file).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise InputError(f"The token file {path} cannot be read ({error.strerror or 'unreadable'}).") from error
    if not token:
        raise InputError(f"The token file {path} is empty: put your Hugging Face access token in it.")
    return token


def _interrupt_on_terminate(signum, frame) -> None:
    """A program that cancels the download (the add-on) terminates the process: unwinding as for
    Ctrl-C lets huggingface_hub delete its partial file instead of leaving it in the cache."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from ..models import download
    from ..models.download_progress import JsonProgress, TerminalProgress, plan_lines

    signal.signal(signal.SIGTERM, _interrupt_on_terminate)
    progress = JsonProgress() if args.progress == "json" else TerminalProgress()
    try:
        if download.hub_offline():
            raise InputError("HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it and try again.")
        token = read_token(args.token_file)
        plans = download.plan_downloads(download.specs_from_names(args.models), token=token)
        if args.dry_run:
            if isinstance(progress, JsonProgress):
                progress.start(plans)
                progress.finish(0)
            else:
                print("\n".join(plan_lines(plans, with_files=True)))
            return 0
        download.download(plans, progress, token=token)
    except HeadSculptError as error:
        if isinstance(progress, JsonProgress):
            progress.error(str(error))
        raise
    return 0
