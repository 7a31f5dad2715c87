"""Fusion of per-view landmark lifts into one surface point per MediaPipe landmark.

Each view lifts every 2D landmark onto the surface at its pixel. A lift is dropped when it cannot be
what MediaPipe meant there:
- grazing: the surface at the lift is seen nearly edge-on (a landmark on the silhouette slides round
  to the ear or the far side of the head);
- inconsistent with MediaPipe's own depth: FaceMesh also predicts each landmark's depth; fitted to the
  view's lifts by a similarity transform, that 3D face tells where a landmark should be, and a lift far
  from it (a depth jump at the lift pixel: a face-oval point lifted onto the cheek in front of the
  contour, or onto the far ear) is dropped;
- an outlier from the other views' lifts.
The kept lifts are averaged, weighted by how frontal the landmark's surface is in each view, and the
mean is projected back onto the surface; except where MediaPipe's own 3D face puts the landmark inside
a fold of the surface, behind the lifted point (the inner lips of a closed mouth lie in the mouth's
slit, behind the lip surface a ray meets): there it takes the surface point nearest MediaPipe's.
This is the project's own method (HeadSculpt uses a fixed FLAME -> MediaPipe vertex map, which only
exists for FLAME).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .landmarks import NUM_LANDMARKS, LandmarkEmbedding

# A lift counts only where its surface faces the camera at least this much (cosine).
MIN_FRONTALITY = 0.3
# Weight of a kept lift: frontality ** FRONTALITY_POWER.
FRONTALITY_POWER = 2.0
# The similarity fit of MediaPipe's 3D landmarks uses lifts at least this frontal.
FIT_FRONTALITY = 0.5
# A lift disagrees with MediaPipe's depth when farther from the fitted point than this many times the
# view's median fit residual (about 2.5 mm on FLAME, so about 10 mm) ...
DISAGREEMENT_FACTOR = 4.0
# ... and never closer than this (normalised units, the head has radius 0.7).
MIN_DISAGREEMENT = 0.02
# A kept lift farther than this from the landmark's weighted median of the views is an outlier.
OUTLIER_DISTANCE = 0.05
# A view's lift counts as agreeing with the fused point (for the confidence) within this distance.
AGREEMENT_DISTANCE = 0.02
# A landmark goes into a fold when the surface point nearest MediaPipe's fitted landmark (median of
# the views) lies this close to it (about 2 mm on FLAME) ...
FOLD_GAP = 0.008
# ... and this much behind the fused point as seen from the front (about 1.5 mm on FLAME).
FOLD_DEPTH = 0.006


@dataclass
class ViewLift:
    """One view's landmarks on the surface: (478,) triangles (-1 = not found), (478, 3) points,
    (478,) |cosine| between the surface normal and the direction to the camera, and (478, 3)
    MediaPipe's own 3D landmarks in a right-handed image frame (x right, y up, z towards the camera)."""

    face_index: np.ndarray
    points: np.ndarray
    frontality: np.ndarray
    facemesh_3d: np.ndarray


def similarity_fit(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale, rotation and translation that best map `source` (K, 3) onto `target` (least squares)."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    a, b = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(b.T @ a / len(a))
    sign = np.eye(3)
    sign[2, 2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = u @ sign @ vt
    scale = float((sigma * np.diag(sign)).sum() / max((a ** 2).sum(axis=1).mean(), 1e-12))
    return scale, rotation, mu_t - scale * rotation @ mu_s


def fitted_facemesh(lift: ViewLift) -> tuple[np.ndarray, np.ndarray] | None:
    """MediaPipe's own 3D landmarks of the view (478, 3), mapped onto the view's frontal lifts by a
    similarity fit, and the (478,) anchors of that fit; None where too few lifts are frontal."""
    anchors = (lift.face_index >= 0) & (lift.frontality >= FIT_FRONTALITY)
    if anchors.sum() < 10:
        return None

    def fit(on: np.ndarray) -> np.ndarray:
        scale, rotation, shift = similarity_fit(lift.facemesh_3d[on], lift.points[on])
        return scale * lift.facemesh_3d @ rotation.T + shift

    fitted = fit(anchors)
    residual = np.linalg.norm(fitted - lift.points, axis=1)
    # Refit on the anchors that agree, so that a few wild lifts do not bend the fit.
    agreeing = anchors & (residual <= 3.0 * np.median(residual[anchors]))
    if agreeing.sum() >= 10:
        return fit(agreeing), agreeing
    return fitted, anchors


def depth_consistent(lift: ViewLift, fitted: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """(478,) bool: the lift lies where MediaPipe's fitted 3D face (`fitted_facemesh`) puts the landmark."""
    ok = lift.face_index >= 0
    if fitted is None:
        return ok
    points, anchors = fitted
    residual = np.linalg.norm(points - lift.points, axis=1)
    limit = max(DISAGREEMENT_FACTOR * float(np.median(residual[anchors])), MIN_DISAGREEMENT)
    return ok & (residual <= limit)


def into_folds(points: np.ndarray, expected: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """`points` (K, 3), each replaced by the surface point nearest its `expected` point (MediaPipe's
    fitted landmark; NaN = none) where that surface point lies on `expected` and behind `points` as
    seen from the front (+Z): a fold of the surface that a ray from the camera cannot reach."""
    from ..mesh.closest import closest_on_surface

    out = np.array(points, dtype=np.float64)
    known = np.isfinite(expected).all(axis=1)
    if not known.any():
        return out
    face, bary, gap = closest_on_surface(expected[known], vertices, faces)
    nearest = np.einsum("kc,kcd->kd", bary, np.asarray(vertices, dtype=np.float64)[np.asarray(faces)[face]])
    move = (gap <= FOLD_GAP) & (out[known, 2] - nearest[:, 2] > FOLD_DEPTH)
    rows = np.flatnonzero(known)[move]
    out[rows] = nearest[move]
    return out


def _weighted_median(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per landmark and axis, the weighted median over views: points (V, L, 3), weights (V, L)."""
    order = np.argsort(points, axis=0)
    sorted_points = np.take_along_axis(points, order, axis=0)
    sorted_weights = np.take_along_axis(np.broadcast_to(weights[..., None], points.shape), order, axis=0)
    cumulative = np.cumsum(sorted_weights, axis=0)
    half = 0.5 * cumulative[-1:]
    index = np.argmax(cumulative >= half, axis=0)[None]
    return np.take_along_axis(sorted_points, index, axis=0)[0]


def surface_embedding(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K,) triangles and (K, 3) barycentrics of the surface points nearest `points` (K, 3)."""
    from ..mesh.closest import closest_on_surface

    face, bary, _ = closest_on_surface(points, vertices, faces)
    return face, bary.astype(np.float32)


def fuse_views(lifts: list[ViewLift], vertices: np.ndarray, faces: np.ndarray, num_views: int) -> LandmarkEmbedding:
    """One embedding from the views' lifts (see the module docstring). A landmark that no view lifts
    credibly keeps the plain median of the views that found it, with confidence 0."""
    points = np.stack([lift.points for lift in lifts])  # (V, L, 3)
    found = np.stack([lift.face_index >= 0 for lift in lifts])  # (V, L)
    frontality = np.stack([lift.frontality for lift in lifts])
    fits = [fitted_facemesh(lift) for lift in lifts]
    keep = found & (frontality >= MIN_FRONTALITY) & np.stack([depth_consistent(lift, fit) for lift, fit in zip(lifts, fits)])
    weights = np.where(keep, np.clip(frontality, 0.0, 1.0) ** FRONTALITY_POWER, 0.0)
    credible = keep.any(axis=0)
    centre = _weighted_median(np.where(keep[..., None], points, 0.0), np.where(credible, weights, 1.0))
    near = np.linalg.norm(points - centre[None], axis=-1) <= OUTLIER_DISTANCE
    keep &= near | ~(keep & near).any(axis=0)[None]  # never drop every credible lift of a landmark
    weights = np.where(keep, weights, 0.0)
    fused = np.einsum("vl,vld->ld", weights, points) / weights.sum(axis=0).clip(1e-12)[:, None]
    any_found = found.any(axis=0)
    fallback = ~credible & any_found
    if fallback.any():
        masked = np.where(found[..., None], points, np.nan)
        fused[fallback] = np.nanmedian(masked[:, fallback], axis=0)
    # Confidence: how many views' lifts agree on the landmark where the rays put it.
    agree = found & (np.linalg.norm(points - fused[None], axis=-1) <= AGREEMENT_DISTANCE)
    confidence = np.where(credible, agree.sum(axis=0) / num_views, 0.0).astype(np.float32)
    fitted = np.stack([fit[0] if fit is not None else np.full_like(fused, np.nan) for fit in fits])
    with warnings.catch_warnings():  # a landmark no view fitted stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(np.where(found[..., None], fitted, np.nan), axis=0)
    fused = np.where(credible[:, None], into_folds(fused, expected, vertices, faces), fused)
    face_index = np.full(NUM_LANDMARKS, -1, dtype=np.int64)
    barycentric = np.zeros((NUM_LANDMARKS, 3), dtype=np.float32)
    if any_found.any():
        face_index[any_found], barycentric[any_found] = surface_embedding(fused[any_found], vertices, faces)
    return LandmarkEmbedding(face_index=face_index, barycentric=barycentric, confidence=confidence)
