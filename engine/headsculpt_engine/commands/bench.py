"""`headsculpt bench`: time warm iterations of each stage and project a full run (docs/benchmarks.md)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import PRESETS
from ..devices import DEVICE_HELP


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="time the stages' iterations and project a full run",
        description="Time warm iterations of the coarse, fine and edit stages on the built-in head prior: the "
                    "median seconds per iteration, its split (render, VAE encode, UNet + ControlNet, backward, "
                    "optimizer step), peak memory, the arithmetic of an iteration and the rate it ran at, and the "
                    "projected time of a full run of the papers' length (7,000 coarse + 5,000 fine iterations).")
    parser.add_argument("--stage", choices=("all", "coarse", "fine", "edit"), default="all")
    parser.add_argument("--models", default="sd15-random",
                        help="'sd15-random' (the real SD 1.5 architectures with random weights: the real cost, "
                             "nothing to download; default), 'tiny', 'default' (the papers' models from your "
                             "local cache) or a models folder")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per stage (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    parser.add_argument("--preset", default="paper", choices=PRESETS, help="settings to time (default paper)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a setting, e.g. --set guidance.resolution=256 or --set models.compile=true")
    parser.add_argument("--ablate", action="store_true",
                        help="also time each stage once more per part of the fast path, with that part turned off "
                             "(batched CFG, no autograd through the UNet, SDPA attention, cached text embeddings, "
                             "occupancy skipping): what each part gains")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stages' random draws (default 0)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..bench import STAGES, BenchRequest, cpu_cost_warning, format_table, run_bench
    from ..devices import resolve_device
    from ..config import apply_overrides, preset_config
    from ..errors import InputError

    if args.iters < 1 or args.warmup < 0:
        raise InputError("--iters must be at least 1 and --warmup 0 or more.")
    try:
        cfg = apply_overrides(preset_config(args.preset), args.overrides)
    except ValueError as error:
        raise InputError(str(error)) from error
    cfg.seed = args.seed
    request = BenchRequest(stages=STAGES if args.stage == "all" else (args.stage,), models=args.models,
                           device=args.device, iterations=args.iters, warmup=args.warmup,
                           ablate=args.ablate)
    warning = cpu_cost_warning(cfg, args.models, resolve_device(args.device))
    if warning:
        print(f"Warning: {warning}", file=sys.stderr)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage) or bars.setdefault(stage, tqdm(total=total, desc=stage, unit="it"))
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    result = run_bench(cfg, request, progress=progress)
    print(format_table(result))
    if args.json:
        path = Path(args.json).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0
