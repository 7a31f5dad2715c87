"""Guided landmarks: the full 478-point MediaPipe layout carried onto a head from a handful of keypoints.

For heads MediaPipe cannot read (stylised, cartoon, non-human), the artist marks six keypoints on the
mesh (outer eye corners, nose tip, mouth corners, chin). The built-in head's detected landmarks are the
template: a similarity (Umeyama) fit maps its six keypoints onto the artist's, a thin-plate spline
(degree-1 polynomial, exact at the keypoints) bends the rest of the layout with them, and each warped
landmark is projected onto the closest point of the mesh, giving a (triangle, barycentric) embedding.
HeadSculpt itself maps FLAME vertices to MediaPipe indices by hand; the warp is this project's way to
reach heads of any topology. Closest-point projection is a choice of ours: a landmark may land on an
inner surface (eyeball, teeth) when the warp leaves it inside the head.

Keypoint file (JSON), points in the mesh file's own coordinates, left and right as the character's own:
    {"keypoints": {"right_eye_outer": [x, y, z], "left_eye_outer": [...], "nose_tip": [...],
                   "mouth_right": [...], "mouth_left": [...], "chin": [...]}}
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..mesh.closest import closest_on_surface
from .assets import ASSETS_DIR, BASE_HEAD, BASE_HEAD_LANDMARKS
from .landmarks import NUM_LANDMARKS, LandmarkEmbedding

# Keypoint name -> MediaPipe FaceMesh landmark index.
KEYPOINTS: dict[str, int] = {"right_eye_outer": 33, "left_eye_outer": 263, "nose_tip": 1,
                             "mouth_right": 61, "mouth_left": 291, "chin": 152}
# A keypoint farther from the surface than this share of the head's radius is refused (a click lands on
# the surface; a typed point this far off is a wrong unit or axis).
FAR_SHARE = 0.05
# Two keypoints closer than this share of the head's radius make the fit degenerate.
MIN_SPACING_SHARE = 0.01
GUIDED_CONFIDENCE = 0.5  # placed by a warp, not seen by a detector


def parse_keypoints(mapping: Any, source: str = "The keypoints") -> dict[str, np.ndarray]:
    """Check a {name: [x, y, z]} mapping: exactly the six names, three finite numbers each."""
    if not isinstance(mapping, dict):
        raise InputError(f"{source} must map keypoint names to [x, y, z] points: {', '.join(KEYPOINTS)}.")
    missing = [name for name in KEYPOINTS if name not in mapping]
    unknown = [str(name) for name in mapping if name not in KEYPOINTS]
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unknown {', '.join(unknown)}"] if unknown else [])
        raise InputError(f"{source} must name exactly the {len(KEYPOINTS)} keypoints {', '.join(KEYPOINTS)} "
                         f"({'; '.join(parts)}).")
    points = {}
    for name in KEYPOINTS:
        value = mapping[name]
        if not (isinstance(value, (list, tuple)) and len(value) == 3
                and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in value)):
            raise InputError(f"{source}: keypoint {name} must be a list of three numbers [x, y, z].")
        if not all(math.isfinite(c) for c in value):
            raise InputError(f"{source}: keypoint {name} has a coordinate that is not a finite number (NaN "
                             "or infinity); mark it again on the mesh.")
        points[name] = np.asarray(value, dtype=np.float64)
    return points


def read_keypoint_file(path: str | Path) -> dict[str, np.ndarray]:
    """The keypoints of a keypoint JSON file (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The keypoint file {path} does not exist; give a JSON file of the {len(KEYPOINTS)} "
                         "keypoints (see the README's 'Heads with no detectable face').")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"The keypoint file {path.name} is not readable JSON ({error}).") from None
    if not isinstance(data, dict) or "keypoints" not in data:
        raise InputError(f"The keypoint file {path.name} must be a JSON object with a \"keypoints\" entry.")
    return parse_keypoints(data["keypoints"], f"The keypoint file {path.name}")


def write_keypoint_file(path: str | Path, points: dict[str, Any]) -> None:
    """The keypoint file the CLI reads, from {name: [x, y, z]} (checked first)."""
    checked = parse_keypoints(points)
    Path(path).write_text(json.dumps({"keypoints": {n: [float(c) for c in p] for n, p in checked.items()}},
                                     indent=2))


@lru_cache(maxsize=1)
def template_landmarks() -> np.ndarray:
    """(478, 3) landmarks of the built-in head in its file's coordinates (NaN rows where missing)."""
    from .meshio import clean_mesh, load_mesh_file

    mesh = clean_mesh(load_mesh_file(ASSETS_DIR / BASE_HEAD))
    points = LandmarkEmbedding.load(ASSETS_DIR / BASE_HEAD_LANDMARKS).points(mesh.vertices, mesh.faces)
    points.setflags(write=False)
    return points


def similarity_fit(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) minimising sum |s R source_i + t - target_i|^2 with R a rotation (Umeyama 1991)."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    a, b = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(b.T @ a / len(source))
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(sigma) @ sign) / (a**2).sum(axis=1).mean())
    return scale, rotation, mu_t - scale * rotation @ mu_s


def warp_layout(template: np.ndarray, source_keys: np.ndarray, target_keys: np.ndarray) -> np.ndarray:
    """`template` points carried by the similarity + thin-plate-spline warp that takes each source
    keypoint exactly onto its target. NaN rows stay NaN."""
    from scipy.interpolate import RBFInterpolator

    scale, rotation, shift = similarity_fit(source_keys, target_keys)
    moved_keys = source_keys @ rotation.T * scale + shift
    bend = RBFInterpolator(moved_keys, target_keys - moved_keys, kernel="thin_plate_spline", degree=1)
    out = np.full_like(template, np.nan)
    ok = np.isfinite(template).all(axis=1)
    moved = template[ok] @ rotation.T * scale + shift
    out[ok] = moved + bend(moved)
    return out


def check_keypoints_on_mesh(keypoints: dict[str, np.ndarray], vertices: np.ndarray, faces: np.ndarray) -> None:
    """Refuse keypoints off the surface, or so close together that the fit is degenerate."""
    v = np.asarray(vertices, dtype=np.float64)
    radius = float(np.linalg.norm(v - 0.5 * (v.min(axis=0) + v.max(axis=0)), axis=1).max())
    names = list(keypoints)
    stacked = np.stack([keypoints[n] for n in names])
    _, _, distance = closest_on_surface(stacked, v, faces)
    for name, d in zip(names, distance):
        if d > FAR_SHARE * radius:
            raise InputError(f"Keypoint {name} lies {100 * d / radius:.0f}% of the head's size away from the "
                             "mesh surface; mark it on the prior itself, in the mesh file's own coordinates.")
    gaps = np.linalg.norm(stacked[:, None] - stacked[None], axis=-1)
    np.fill_diagonal(gaps, np.inf)
    i, j = np.unravel_index(np.argmin(gaps), gaps.shape)
    if gaps[i, j] < MIN_SPACING_SHARE * radius:
        raise InputError(f"Keypoints {names[i]} and {names[j]} sit on the same spot; mark each at its own "
                         "place on the face.")


def upright_turn(keypoints: dict[str, np.ndarray]) -> np.ndarray:
    """The axis-aligned turn (one of `orientation.axis_rotations`, as the orientation search uses) that
    brings marked keypoints closest to the built-in head's pose, face along +Z and +Y up: the training
    cameras assume that pose, so a head marked lying down or facing sideways is turned first. The
    identity for a head within 45 degrees of upright."""
    from .orientation import axis_rotations

    template = template_landmarks()
    source = np.stack([template[index] for index in KEYPOINTS.values()])
    target = np.stack([keypoints[name] for name in KEYPOINTS])
    _, rotation, _ = similarity_fit(source, target)  # target ~ s R source + t, so R^T turns it upright
    return max(axis_rotations(), key=lambda turn: float(np.trace(turn @ rotation)))


def keypoint_embedding(vertices: np.ndarray, faces: np.ndarray,
                       keypoints: dict[str, np.ndarray]) -> LandmarkEmbedding:
    """The 478-landmark embedding on the mesh (`vertices` in the keypoints' frame) guided by `keypoints`."""
    check_keypoints_on_mesh(keypoints, vertices, faces)
    template = template_landmarks()
    source = np.stack([template[index] for index in KEYPOINTS.values()])
    target = np.stack([keypoints[name] for name in KEYPOINTS])
    warped = warp_layout(template, source, target)
    ok = np.isfinite(warped).all(axis=1)
    face_index = np.full(NUM_LANDMARKS, -1, dtype=np.int64)
    barycentric = np.zeros((NUM_LANDMARKS, 3), dtype=np.float32)
    placed, bary, _ = closest_on_surface(warped[ok], vertices, faces)
    face_index[ok], barycentric[ok] = placed, bary
    confidence = np.where(ok, GUIDED_CONFIDENCE, 0.0).astype(np.float32)
    return LandmarkEmbedding(face_index=face_index, barycentric=barycentric, confidence=confidence)
