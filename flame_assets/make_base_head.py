"""Generate the built-in neutral head prior, `base_head.obj`, deterministically.

The head is an implicit surface: ellipsoids and capsules for skull, face, jaw, chin, cheekbones,
brow ridge, nose, lips, ears and neck, joined by smooth minimum, with eye sockets and the mouth
line carved out and eyeballs set in. Marching cubes extracts it; libigl's quadric decimation brings
it to a few thousand vertices. Frame: metres, +Y up, the face looks along +Z (as FLAME); the neck is
closed by a flat cut.

Run:  python flame_assets/make_base_head.py   (writes base_head.obj and base_head_landmarks.npz)
The landmark embedding is detected on renders exactly as for a user's head (headsculpt_engine.prior).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VOXEL = 0.0016  # metres; fine enough for lips and eyelids before decimation
TARGET_FACES = 9000
BOUNDS = np.array([[-0.105, -0.215, -0.115], [0.105, 0.135, 0.135]])


def ellipsoid(p: np.ndarray, centre, radii) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid (exact for spheres)."""
    radii = np.asarray(radii, dtype=np.float64)
    q = (p - np.asarray(centre)) / radii
    return (np.linalg.norm(q, axis=-1) - 1.0) * radii.min()


def capsule(p: np.ndarray, a, b, radius_a: float, radius_b: float) -> np.ndarray:
    """Distance to a cone-capped segment a->b whose radius goes from radius_a to radius_b."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    closest = a + t[..., None] * ab
    return np.linalg.norm(p - closest, axis=-1) - (radius_a + (radius_b - radius_a) * t)


def smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth intersection; smooth_max(a, -b) carves b out of a."""
    return -smooth_union(-a, -b, k)


def head_sdf(p: np.ndarray) -> np.ndarray:
    """Signed distance (approximate, negative inside) of the neutral head at points p (..., 3)."""
    d = ellipsoid(p, (0.0, 0.030, -0.012), (0.076, 0.090, 0.098))  # cranium
    d = smooth_union(d, ellipsoid(p, (0.0, -0.030, 0.018), (0.064, 0.088, 0.072)), 0.02)  # face mass
    d = smooth_union(d, ellipsoid(p, (0.0, -0.072, 0.028), (0.052, 0.040, 0.058)), 0.02)  # jaw
    d = smooth_union(d, ellipsoid(p, (0.0, -0.098, 0.058), (0.024, 0.018, 0.020)), 0.012)  # chin
    for side in (-1.0, 1.0):
        d = smooth_union(d, ellipsoid(p, (side * 0.042, -0.010, 0.056), (0.020, 0.015, 0.018)), 0.016)  # cheekbone
    d = smooth_union(d, ellipsoid(p, (0.0, 0.036, 0.074), (0.056, 0.012, 0.016)), 0.018)  # brow ridge
    for side in (-1.0, 1.0):  # eye sockets
        d = smooth_max(d, -ellipsoid(p, (side * 0.032, 0.014, 0.092), (0.021, 0.014, 0.020)), 0.006)
    # Nose: bridge narrowing upwards, tip, wings.
    d = smooth_union(d, capsule(p, (0.0, 0.022, 0.086), (0.0, -0.026, 0.108), 0.0065, 0.011), 0.008)
    d = smooth_union(d, ellipsoid(p, (0.0, -0.030, 0.106), (0.013, 0.011, 0.012)), 0.006)
    for side in (-1.0, 1.0):
        d = smooth_union(d, ellipsoid(p, (side * 0.013, -0.034, 0.093), (0.0075, 0.0065, 0.008)), 0.007)
        d = smooth_max(d, -ellipsoid(p, (side * 0.008, -0.041, 0.101), (0.0035, 0.0025, 0.004)), 0.002)  # nostril
    # Lips with a mouth line between them.
    d = smooth_union(d, ellipsoid(p, (0.0, -0.060, 0.088), (0.026, 0.0075, 0.011)), 0.006)
    d = smooth_union(d, ellipsoid(p, (0.0, -0.074, 0.085), (0.023, 0.0085, 0.011)), 0.006)
    d = smooth_max(d, -ellipsoid(p, (0.0, -0.0665, 0.098), (0.027, 0.0016, 0.016)), 0.002)
    # Eyeballs in the sockets, with upper lids.
    for side in (-1.0, 1.0):
        d = np.minimum(d, ellipsoid(p, (side * 0.032, 0.013, 0.070), (0.0125, 0.0125, 0.0125)))
        d = smooth_union(d, ellipsoid(p, (side * 0.032, 0.021, 0.078), (0.014, 0.005, 0.008)), 0.003)
    # Ears.
    for side in (-1.0, 1.0):
        ear = ellipsoid(p, (side * 0.079, 0.002, -0.012), (0.011, 0.030, 0.018))
        ear = smooth_max(ear, -ellipsoid(p, (side * 0.086, 0.0, -0.010), (0.006, 0.020, 0.011)), 0.003)
        d = smooth_union(d, ear, 0.006)
    # Neck, cut flat at the bottom.
    d = smooth_union(d, capsule(p, (0.0, -0.06, -0.020), (0.0, -0.30, -0.030), 0.056, 0.062), 0.03)
    return np.maximum(d, -(p[..., 1] - (-0.20)))


def build_mesh(voxel: float = VOXEL, target_faces: int = TARGET_FACES) -> tuple[np.ndarray, np.ndarray]:
    import igl
    from skimage.measure import marching_cubes

    axes = [np.arange(lo, hi + voxel, voxel) for lo, hi in BOUNDS.T]
    yz = np.stack(np.meshgrid(axes[1], axes[2], indexing="ij"), axis=-1)
    # One x slab at a time keeps the temporaries small.
    values = np.stack([head_sdf(np.concatenate([np.full(yz.shape[:-1] + (1,), x), yz], axis=-1)) for x in axes[0]])
    verts, faces, _, _ = marching_cubes(values, level=0.0, spacing=(voxel,) * 3)
    verts = verts + BOUNDS[0]
    faces = faces[:, ::-1]  # marching_cubes winds inward for negative-inside fields; make normals point out
    v, f, _, _ = igl.qslim(np.asfortranarray(verts, dtype=np.float64),
                           np.asfortranarray(faces, dtype=np.int32), target_faces)
    return np.asarray(v), np.asarray(f)


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    lines = ["# HeadSculpt built-in neutral head prior (generated by make_base_head.py)",
             "# metres, +Y up, face along +Z"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for base_head.obj (default: flame_assets/)")
    parser.add_argument("--skip-landmarks", action="store_true", help="only write the mesh")
    args = parser.parse_args(argv)
    vertices, faces = build_mesh()
    obj = args.out / "base_head.obj"
    write_obj(obj, vertices, faces)
    print(f"wrote {obj}: {len(vertices)} vertices, {len(faces)} faces")
    if not args.skip_landmarks:
        sys.path.insert(0, str(HERE.parent / "engine"))
        from headsculpt_engine.prior.builtin import write_builtin_landmarks

        path, found = write_builtin_landmarks(obj)
        print(f"wrote {path}: {found} of 478 landmarks found")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
