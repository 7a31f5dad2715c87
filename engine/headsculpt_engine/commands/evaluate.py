"""`headsculpt eval RUN...`: the papers' CLIP metrics for finished runs, as JSON and as a page."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="score finished runs with the papers' CLIP metrics; a JSON file and an HTML page",
        description="Render each finished avatar from views around the head (the turntable's cameras) and "
                    "score it with CLIP as HeadSculpt's Table 1 does: CLIP-Score (100 x cosine of image and "
                    "prompt, averaged over views), CLIP R-Precision (the share of avatars whose own prompt "
                    "ranks first among all runs' prompts and --prompts), and for edits the CLIP Directional "
                    "Similarity (parent render -> edit render against parent prompt -> edited prompt) and an "
                    "identity score (parent and edit renders alike).")
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                        help="finished run folders (generate or edit), or batch/dataset manifests (.json)")
    parser.add_argument("--clip", default=None, metavar="ID",
                        help="CLIP model: a Hugging Face id, a folder, or 'tiny' (default: "
                             "openai/clip-vit-large-patch14, the papers')")
    parser.add_argument("--views", type=int, default=8, help="views per avatar (default 8)")
    parser.add_argument("--prompts", type=Path, default=None, metavar="FILE",
                        help="distractor prompts for R-Precision, one a line")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the scores here")
    parser.add_argument("--html", type=Path, default=None, metavar="FILE", help="write a self-contained page here")
    parser.add_argument("--allow-download", action="store_true", help="let a missing CLIP model be downloaded")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..evaluation.clip import DEFAULT_CLIP, load_clip
    from ..evaluation.report import write_html, write_json
    from ..evaluation.runs import expand_manifests, read_prompts, read_run
    from ..evaluation.scoring import evaluate_runs

    if not 1 <= args.views <= 64:
        raise InputError("--views takes 1 to 64 views per avatar.")
    runs = [read_run(folder) for folder in expand_manifests(args.runs)]  # every run checked before any work
    distractors = read_prompts(args.prompts) if args.prompts else []
    name = args.clip or DEFAULT_CLIP
    print(f"Loading CLIP ({name})...", flush=True)
    clip = load_clip(name, allow_download=args.allow_download)
    report = evaluate_runs(runs, clip, args.views, distractors, progress=lambda message: print(f"  {message}",
                                                                                              flush=True))
    for row in report["runs"]:
        line = f"{row['name']}: CLIP-Score {row['clip_score']:.2f}, prompt rank {row['prompt_rank']}"
        if row["directional_similarity"] is not None:
            line += f", directional {row['directional_similarity']:.2f}, identity {row['identity']:.2f}"
        print(line)
    summary = report["summary"]
    print(f"R-Precision {summary['r_precision']:.1f} % over {summary['prompts_ranked']} prompts; "
          f"mean CLIP-Score {summary['clip_score']:.2f}")
    if args.json:
        print(f"wrote {write_json(report, args.json)}")
    if args.html:
        print(f"wrote {write_html(report, args.html)}")
    if not args.json and not args.html:
        print(json.dumps(report["summary"], indent=2))
    return 0
