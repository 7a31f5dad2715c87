"""`headsculpt landmarks`: the landmarks of a head prior, as maps, a contact sheet and JSON."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import add_keypoint_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "landmarks", help="find a head prior's facial landmarks and draw its landmark maps",
        description="Find the 478 MediaPipe landmarks on a head mesh (or read them from a landmark file), "
                    "and write landmark maps for the front, left, back and right views, a contact sheet, "
                    "and landmarks.json (3D points in the mesh's own coordinates).")
    parser.add_argument("--prior", required=True,
                        help="head mesh (OBJ, PLY or GLB), or 'builtin' for the built-in neutral head")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--landmark-file", type=Path, default=None,
                        help=".npy of 478 vertex indices, one per MediaPipe landmark (skips detection)")
    add_keypoint_options(parser, with_mode=False)
    parser.add_argument("--size", type=int, default=512, help="map size in pixels (default 512)")
    parser.add_argument("--back-view", choices=["none", "oval"], default="oval",
                        help="back-view map: nothing, or the face oval only (default oval)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ..errors import InputError
    from ..prior.preview import VIEW_AZIMUTHS, contact_sheet, landmark_view_cameras
    from .options import prior_from_args

    if args.size < 64 or args.size > 4096:
        raise InputError(f"--size {args.size} is out of range; use 64 to 4096 pixels.")
    print("loading the built-in head prior" if args.prior == "builtin" else f"loading {args.prior}")
    prior = prior_from_args(args.prior, args.landmark_file, args.keypoints, progress=lambda m: print(f"  {m}"))
    print(f"prior: {len(prior.vertices)} vertices, {len(prior.faces)} faces"
          f"{' (FLAME topology)' if prior.is_flame else ''}, hash {prior.content_hash}")
    assert prior.landmarks is not None
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    cameras = landmark_view_cameras(args.size)
    maps = (prior.landmark_maps(cameras, args.back_view).permute(0, 2, 3, 1) * 255).round().byte().numpy()
    for name, image in zip(VIEW_AZIMUTHS, maps):
        Image.fromarray(image).save(out / f"landmarks_{name}.png")
        print(f"wrote {out / f'landmarks_{name}.png'}")
    Image.fromarray(contact_sheet(prior, size=min(args.size, 384), policy=args.back_view)).save(out / "contact_sheet.png")
    print(f"wrote {out / 'contact_sheet.png'}")

    points = prior.transform.to_canonical(prior.landmark_points())
    found = np.isfinite(points).all(axis=1)
    description = {
        "points": [[float(c) for c in p] if ok else None for p, ok in zip(points, found)],
        "confidence": [float(c) for c in prior.landmarks.confidence],
        # The axis turn the orientation search applied to face the head along +Z (identity: none).
        "rotation": prior.transform.as_dict()["rotation"],
    }
    (out / "landmarks.json").write_text(json.dumps(description))
    print(f"wrote {out / 'landmarks.json'}: {int(found.sum())} of {len(found)} landmarks found, "
          f"mean confidence {float(prior.landmarks.confidence.mean()):.2f}")
    return 0
