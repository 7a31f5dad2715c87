"""`headsculpt batch`: N attribute variations of one prompt, one generation each (here, or as jobs on
an engine server), with a manifest that a rerun resumes. The logic is in headsculpt_engine/batch/."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import InputError
from .generate import add_generation_options

TOKEN_ENV = "HEADSCULPT_TOKEN"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "batch", help="generate N attribute variations of one prompt",
        description="Fill the prompt's {placeholders} with N distinct combinations of the values an attribute "
                    "file lists (the same for the same --seed), generate one avatar each, and keep a manifest "
                    "(batch.json) in the batch folder; running the same command again resumes the batch.")
    parser.add_argument("--prompt", required=True,
                        help='a template, e.g. "a DSLR portrait of a {age} {person} with {hair}"')
    parser.add_argument("--attributes", required=True, metavar="FILE.json",
                        help='JSON mapping each placeholder to its values, e.g. {"age": ["young", "old"], ...}')
    parser.add_argument("--count", type=int, default=4, help="how many variations (default 4)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="batch folder (default: out/batch-<prompt>-seed<seed>); one run folder per variation")
    parser.add_argument("--server", default=None, metavar="URL",
                        help="run the variations as jobs on this engine server (`headsculpt serve`) instead of here")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help=f"with --server: the file holding its token (its DATA/token); or set {TOKEN_ENV}")
    parser.add_argument("--poll", type=float, default=2.0, metavar="S", help="with --server: seconds between polls")
    add_generation_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..batch.attributes import draw, load_attribute_file, match_template
    from ..batch.manifest import open_manifest
    from ..pipeline import validate_prompt
    from .options import slug

    template = args.prompt.strip()
    attributes = load_attribute_file(Path(args.attributes).expanduser())
    match_template(template, attributes, f"the attribute file {args.attributes}")
    variations = draw(template, attributes, args.count, args.seed)
    for variation in variations:
        validate_prompt(variation.prompt)
    folder = Path(args.out or Path("out") / f"batch-{slug(template)}-seed{args.seed}")
    server = args.server.rstrip("/") if args.server else None
    manifest = open_manifest(folder, template, attributes, args.seed, server, variations)
    print(f"Batch of {len(variations)} variations of \"{template}\" (seed {args.seed}) in {folder}", flush=True)
    failed = _run_remote(args, manifest) if server else _run_local(args, manifest)
    for entry in failed:
        print(f"[{entry.index}/{len(manifest.entries)}] {entry.state}: {entry.message}", flush=True)
    done = len(manifest.entries) - len(failed)
    print(f"Done: {done} of {len(manifest.entries)} variations finished; manifest {manifest.path}", flush=True)
    return 0 if not failed else 1


def _run_local(args: argparse.Namespace, manifest) -> list:
    from ..batch.local import run_local
    from .generate import generation_config, load_prior_option
    from .options import ProgressBars, cancel_on_interrupt

    cfg = generation_config(args)
    print(f"Loading the head prior ({args.prior})...", flush=True)
    prior = load_prior_option(args)
    bars = ProgressBars()
    try:
        with cancel_on_interrupt() as cancel_requested:
            run_local(manifest, cfg, prior, bars, cancel_requested)
    finally:
        bars.close()
    return []


# Options that choose how this machine runs a generation; a server's jobs run with the server's own.
LOCAL_ONLY = {"models": None, "overrides": [], "device": "auto", "back_view_token": "", "offline": False}


def _run_remote(args: argparse.Namespace, manifest) -> list:
    from ..batch.remote import EngineApi, run_remote

    given = [f"--{name.replace('_', '-') if name != 'overrides' else 'set'}"
             for name, default in LOCAL_ONLY.items() if getattr(args, name) != default]
    if given:
        raise InputError(f"{', '.join(given)} apply to generations on this machine; jobs on a server run with the "
                         "models and settings the server was started with. Drop them, or leave out --server.")
    fields = {"preset": args.preset, "negative_prompt": args.negative_prompt, "guidance": args.guidance,
              "landmarks": "none" if args.landmarks == "none" else "prior"}
    if args.image:
        fields["image_scale"] = args.image_scale
    image, loras = _image_option(args), _lora_options(args)
    api = EngineApi(manifest.server, _token(args))
    return run_remote(manifest, api, _prior_upload(args), fields, image=image, loras=loras, poll_s=args.poll)


def _lora_options(args: argparse.Namespace) -> list[tuple[str | Path, float]]:
    """The --lora values as the server takes them: a Hub id as it is (the server reads it from its own
    model cache), a file or folder here as the checked .safetensors file to upload, before anything is
    submitted."""
    from ..models.download import is_hub_id
    from ..models.lora import lora_file

    return [(source if is_hub_id(source) else lora_file(source, allow_download=False), float(scale))
            for source, scale in args.loras]


def _image_option(args: argparse.Namespace) -> Path | None:
    """The --image file, checked readable as an image before anything is submitted; None without one."""
    from ..guidance.image_prompt import read_image

    if not args.image:
        return None
    read_image(args.image)
    return Path(args.image).expanduser()


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        path = Path(args.token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as error:
            raise InputError(f"The token file {path} cannot be read ({error.strerror or error}).") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise InputError(f"--server needs the server's token: pass --token-file DATA/token (the server's data "
                         f"folder) or set {TOKEN_ENV}.")
    return token


def _prior_upload(args: argparse.Namespace) -> dict:
    """The prior as the server takes it: the mesh file's own vertices and faces (the server finds the
    landmarks itself, unless --landmark-file or --keypoints gives them, or --landmarks none needs none)."""
    import numpy as np

    from ..prior.builtin import builtin_mesh_path
    from ..prior.meshio import load_mesh_file, triangulate

    path = builtin_mesh_path() if args.prior == "builtin" else Path(args.prior).expanduser()
    mesh = load_mesh_file(path)
    indices = None
    if args.landmark_file:
        try:
            indices = [int(i) for i in np.load(Path(args.landmark_file).expanduser(), allow_pickle=False).ravel()]
        except (OSError, ValueError) as error:
            raise InputError(f"The landmark file {args.landmark_file} cannot be read as a .npy array ({error}).") \
                from None
    keypoints = None
    if args.keypoints:
        from ..prior.keypoints import read_keypoint_file

        keypoints = {name: point.tolist() for name, point in read_keypoint_file(args.keypoints).items()}
    return {"name": path.stem, "vertices": mesh.vertices, "faces": triangulate(mesh.faces), "landmark_indices": indices,
            "keypoints": keypoints, "detect_landmarks": args.landmarks != "none"}
