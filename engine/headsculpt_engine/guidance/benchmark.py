"""Timings of one guidance step, as reported in docs/benchmarks.md.

    python -m headsculpt_engine.guidance.benchmark [--models tiny] [--kind sds|ssd|iesd] [--batch 4]
        [--resolution 64] [--repeats 20] [--device cpu]

A step is what a stage pays per iteration for the guidance: VAE encode of the renders, text
embeddings (cached), the ControlNet(s) and one batched UNet call for every CFG branch, and the
backward pass of the loss into the renders. Models are loaded and two warm-up steps run first;
the median (and min) of the repeats is printed, wall time and CPU time.
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--kind", choices=("sds", "ssd", "iesd"), default="sds")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64, help="guidance resolution (renders are this size)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    from ..cameras import orbit_cameras
    from ..config import preset_config
    from ..models.loading import load_diffusion_models, models_config_from_cli
    from ..profiling import medians, time_steps
    from .base import GuidanceInputs
    from .factory import build_edit_guidance, build_guidance

    cfg = preset_config("tiny")
    cfg.models = models_config_from_cli(args.models, cfg.models)
    cfg.guidance.resolution = args.resolution
    cfg.guidance.kind = "ssd" if args.kind == "ssd" else "sds"
    device = torch.device(args.device)
    models = load_diffusion_models(cfg.models, device, with_ip2p=args.kind == "iesd")
    gen = torch.Generator().manual_seed(0)
    if args.kind == "iesd":
        guidance = build_edit_guidance(cfg, models, "a head of a man", "make him older", generator=gen)
    else:
        guidance = build_guidance(cfg, models, "a head of a man", generator=gen)

    azimuths = [(360.0 * i / args.batch) for i in range(args.batch)]
    cams = orbit_cameras(azimuths, width=args.resolution, height=args.resolution).to(device)
    images = torch.rand(args.batch, 3, args.resolution, args.resolution, generator=gen).to(device).requires_grad_(True)
    maps = torch.zeros_like(images)
    maps[:, 1, args.resolution // 4: 3 * args.resolution // 4, args.resolution // 3: 2 * args.resolution // 3] = 0.8
    reference = torch.rand(images.shape, generator=gen).to(device)
    inputs = GuidanceInputs(images=images, cameras=cams, landmark_maps=maps, reference_images=reference)

    class GuidanceStep:
        """One guidance step as a stage pays it, for `profiling.time_steps`."""

        def step(self, iteration: int) -> None:
            images.grad = None
            guidance(inputs).loss.backward()

    records = time_steps(GuidanceStep(), args.repeats, warmup=2, device=device)
    wall = [r["total"] for r in records]
    typical = medians(records)
    print(f"{args.kind} step, batch {args.batch}, {args.resolution}x{args.resolution}, models {args.models}, "
          f"{device}, torch threads {torch.get_num_threads()}: wall median {1e3 * typical['total']:.1f} ms "
          f"(min {1e3 * min(wall):.1f}; VAE encode {1e3 * typical['vae_encode']:.1f}, UNet + ControlNet "
          f"{1e3 * typical['unet_controlnet']:.1f}), CPU median {1e3 * typical['cpu_total']:.1f} ms, n={args.repeats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
