"""`headsculpt dataset`: multi-view images with cameras in the EG3D layout (StyleAvatar3D's data)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .options import add_keypoint_options, add_run_options, add_style_options

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..dataset.sources import PromptSource

SAMPLER_CHOICES = ("dpmsolver", "ddim")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "dataset", help="multi-view head images with their cameras, for training a 3D GAN (EG3D layout)",
        description="Draw N cameras on the papers' training ranges, render the prior's landmark map from each, "
                    "and sample an image per view with the face-landmark ControlNet and the view-dependent "
                    "prompt (back views with the plain UNet), as StyleAvatar3D makes its data; or render "
                    "finished avatars (--from-runs). Image i takes prompt (or run) i mod their count. Writes "
                    "OUT/images/ (the images and EG3D's dataset.json), OUT/conditions/ (the landmark maps), "
                    "OUT/views.json (prompt, view and camera per image) and OUT/contact_sheet.png. Running the "
                    "same command again resumes: images already there are kept.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", type=Path, metavar="FILE",
                        help="prompts, one a line (or a JSON list of strings)")
    source.add_argument("--from-runs", nargs="+", type=Path, metavar="RUN",
                        help="finished run folders (or batch manifests) whose avatars are rendered instead")
    parser.add_argument("--prior", default="builtin",
                        help="head mesh (OBJ, PLY, GLB) or 'builtin' (default); with --from-runs each run's own")
    parser.add_argument("--landmark-file", default=None, metavar="FILE.npy",
                        help="478 vertex indices (one per MediaPipe landmark) instead of automatic detection")
    add_keypoint_options(parser, with_mode=False)
    parser.add_argument("--views", type=int, required=True, metavar="N", help="number of images to write")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="the dataset folder")
    parser.add_argument("--steps", type=int, default=30, help="sampling steps per image (default 30)")
    parser.add_argument("--sampler", choices=SAMPLER_CHOICES, default="dpmsolver",
                        help="diffusers scheduler: dpmsolver (DPM-Solver++, default) or ddim")
    parser.add_argument("--guidance-scale", type=float, default=7.5,
                        help="classifier-free guidance scale of the sampling (default 7.5)")
    parser.add_argument("--negative-prompt", default="")
    add_run_options(parser)
    add_style_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..dataset.build import build_dataset
    from ..dataset.writer import DatasetWriter
    from ..errors import InputError
    from .options import apply_style_options, config_from_args

    if args.views < 1:
        raise InputError("--views must be at least 1: the number of images the dataset gets.")
    if args.steps < 1:
        raise InputError("--steps must be at least 1.")
    if args.from_runs and (args.loras or args.image):
        raise InputError("--lora and --image style the images sampled from prompts; --from-runs renders finished "
                         "avatars, which keep the styles they were made with. Drop them, or use --prompts.")
    cfg = config_from_args(args)
    apply_style_options(cfg, args)
    size = cfg.guidance.resolution
    settings = {"seed": cfg.seed, "size": size, "camera": asdict(cfg.camera),
                "back_view_policy": cfg.guidance.back_views}
    if args.from_runs:
        from ..dataset.sources import run_sources

        sources = run_sources(args.from_runs)
        settings["renderer"] = "turntable lighting"
    else:
        sources = _prompt_sources(args, cfg)
        settings.update(prior=sources[0].prior.content_hash, models=cfg.models.base, steps=args.steps,
                        sampler=args.sampler, guidance_scale=args.guidance_scale,
                        negative_prompt=args.negative_prompt, prompt_prefix=cfg.guidance.prompt_prefix,
                        back_view_token=cfg.models.back_view_token_file, **_style_settings(cfg))
    settings["sources"] = [source.identity for source in sources]
    writer = DatasetWriter(args.out, settings)
    writer.check()
    print(f"Writing {args.views} images from {len(sources)} {'runs' if args.from_runs else 'prompts'} "
          f"into {args.out}", flush=True)
    count = build_dataset(sources, writer, args.views, cfg.seed, cfg.camera, size, cfg.guidance.back_views,
                          say=lambda line: print(line, flush=True))
    print(f"Done: {count} images with dataset.json in {args.out / 'images'}; contact sheet "
          f"{args.out / 'contact_sheet.png'}")
    return 0


def _style_settings(cfg: "RunConfig") -> dict:
    """The LoRAs and the image prompt as views.json records them (a rerun with others is refused); the
    image is read here, so an unreadable one is refused before anything is written."""
    from ..guidance.image_prompt import read_image
    from ..models.lora import sha256_file

    image = None
    if cfg.guidance.image:
        read_image(cfg.guidance.image)
        image = {"file": cfg.guidance.image, "sha256": sha256_file(Path(cfg.guidance.image)),
                 "scale": cfg.guidance.image_scale}
    return {"loras": [{"source": source, "scale": scale} for source, scale in zip(cfg.models.loras,
                                                                                   cfg.models.lora_scales)],
            "image_prompt": image}


def _prompt_sources(args: argparse.Namespace, cfg: "RunConfig") -> list["PromptSource"]:
    """The prompts on the prior, sharing one sampler whose models load when the first image needs them."""
    from functools import lru_cache

    from ..dataset.sampling import LandmarkSampler, SamplingOptions
    from ..dataset.sources import prompt_sources, read_prompt_list
    from .generate import load_prior_option

    prompts = read_prompt_list(args.prompts)  # a bad prompts file is reported before the prior loads
    print(f"Loading the head prior ({args.prior})...", flush=True)
    prior = load_prior_option(args)
    options = SamplingOptions(steps=args.steps, sampler=args.sampler, guidance_scale=args.guidance_scale,
                              negative_prompt=args.negative_prompt or cfg.guidance.negative_prompt,
                              back_view_policy=cfg.guidance.back_views, controlnet_scale=cfg.guidance.controlnet_scale,
                              resolution=cfg.guidance.resolution, prompt_prefix=cfg.guidance.prompt_prefix)

    @lru_cache(maxsize=1)
    def sampler() -> LandmarkSampler:
        from ..devices import resolve_device
        from ..guidance.factory import run_image_prompt
        from ..models.loading import load_diffusion_models

        print("Loading the diffusion models...", flush=True)
        models = load_diffusion_models(cfg.models, resolve_device(cfg.device),
                                       with_image_prompt=bool(cfg.guidance.image))
        return LandmarkSampler(models, options, image=run_image_prompt(cfg, models))

    return prompt_sources(prompts, prior, sampler)
