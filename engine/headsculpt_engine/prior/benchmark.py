"""Timings of the head prior's landmark work, as reported in docs/benchmarks.md.

    python -m headsculpt_engine.prior.benchmark [MESH] [--repeats N]

Landmark detection is timed from a loaded mesh to its embedding (rendering 9 views, MediaPipe,
back-projection, fusion; libraries already imported, the cache bypassed); a landmark map is timed
for one 512x512 front camera (projection, rasterised visibility, drawing), median of the repeats.
"""
from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mesh", nargs="?", default=None, help="head mesh (default: the built-in head)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    import torch

    from .builtin import builtin_mesh_path
    from .detect import detect_landmarks, run_facemesh
    from .head import load_prior
    from .preview import landmark_view_cameras

    prior = load_prior(args.mesh or builtin_mesh_path(), detect_landmarks=False)
    run_facemesh([])  # import mediapipe and load its graph once, outside the timing
    wall, cpu = time.perf_counter(), time.process_time()
    prior.landmarks = detect_landmarks(prior.vertices, prior.faces)
    detection = time.perf_counter() - wall, time.process_time() - cpu
    cameras = landmark_view_cameras(512)[0]
    prior.landmark_maps(cameras)  # warm-up
    walls, cpus = [], []
    for _ in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        prior.landmark_maps(cameras)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    # CPU time is reported beside wall time: on a shared, busy machine it shows the work itself.
    print(f"mesh: {len(prior.vertices)} vertices, {len(prior.faces)} faces; torch threads {torch.get_num_threads()}")
    print(f"landmark detection: wall {detection[0]:.2f} s, cpu {detection[1]:.2f} s")
    print(f"landmark map 512x512 over {args.repeats}: wall median {1000 * statistics.median(walls):.1f} ms "
          f"(min {1000 * min(walls):.1f}), cpu median {1000 * statistics.median(cpus):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
