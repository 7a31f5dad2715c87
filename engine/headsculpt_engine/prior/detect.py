"""Automatic 3D landmarks for any head mesh: MediaPipe FaceMesh on shaded frontal renders, each 2D
landmark lifted to the surface through the raster's triangle id and barycentrics, views fused."""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from ..errors import InputError
from .landmarks import NUM_LANDMARKS, LandmarkEmbedding

# Frontal views (azimuth, polar) in degrees: straight on, a little left/right, above and below.
DETECTION_VIEWS = ((0.0, 90.0), (-15.0, 90.0), (15.0, 90.0), (0.0, 80.0), (0.0, 100.0))
DETECTION_SIZE = 512
# The normalised head has radius 0.7; this camera frames the face and most of the skull.
DETECTION_RADIUS = 2.2
DETECTION_FOV = 28.0
# A view's lifted landmark counts as agreeing with the fused one within this distance (normalised).
AGREEMENT_DISTANCE = 0.02
SEARCH_RADIUS = 3  # pixels: a landmark just off the silhouette takes the nearest covered pixel

NO_FACE_MESSAGE = ("MediaPipe found no face on renders of the prior mesh, so its landmarks cannot be placed "
                   "automatically; check that the head faces +Z with +Y up, or give a landmark file (a .npy of "
                   f"{NUM_LANDMARKS} vertex indices, one per MediaPipe landmark) with --landmark-file.")


def detection_cameras(device=None):
    from ..cameras import orbit_cameras

    az = [a for a, _ in DETECTION_VIEWS]
    polar = [p for _, p in DETECTION_VIEWS]
    return orbit_cameras(az, polar, DETECTION_RADIUS, DETECTION_FOV, DETECTION_SIZE, DETECTION_SIZE, device=device)


def run_facemesh(images: np.ndarray) -> list[np.ndarray | None]:
    """Per RGB image (H, W, 3) uint8: (478, 2) landmark pixels (x right, y down) or None."""
    import mediapipe as mp

    from ..quiet import native_stderr_silenced

    out: list[np.ndarray | None] = []
    with native_stderr_silenced(), mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, refine_landmarks=True, max_num_faces=1,
            min_detection_confidence=0.5) as face_mesh:
        for image in images:
            result = face_mesh.process(np.ascontiguousarray(image))
            if not result.multi_face_landmarks:
                out.append(None)
                continue
            h, w = image.shape[:2]
            marks = result.multi_face_landmarks[0].landmark
            out.append(np.array([[m.x * w, m.y * h] for m in marks], dtype=np.float64))
    return out


def _lift(xy: np.ndarray, triangle_id: np.ndarray, bary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangle and barycentrics under each landmark pixel (nearest covered pixel nearby), -1 if none."""
    h, w = triangle_id.shape
    faces = np.full(len(xy), -1, dtype=np.int64)
    weights = np.zeros((len(xy), 3), dtype=np.float32)
    offsets = sorted(((dy, dx) for dy in range(-SEARCH_RADIUS, SEARCH_RADIUS + 1)
                      for dx in range(-SEARCH_RADIUS, SEARCH_RADIUS + 1)), key=lambda o: o[0] ** 2 + o[1] ** 2)
    for i, (x, y) in enumerate(xy):
        px, py = int(np.floor(x)), int(np.floor(y))
        for dy, dx in offsets:
            qx, qy = px + dx, py + dy
            if 0 <= qx < w and 0 <= qy < h and triangle_id[qy, qx] >= 0:
                faces[i], weights[i] = triangle_id[qy, qx], bary[qy, qx]
                break
    return faces, weights


def detect_landmarks(vertices: np.ndarray, faces: np.ndarray,
                     progress: Callable[[str], None] | None = None) -> LandmarkEmbedding:
    """Landmark embedding of a mesh in the normalised frame (face along +Z, +Y up).

    Per landmark, the views' surface points are fused by their median; the kept (triangle,
    barycentric) is the view's nearest that median. Confidence = share of views that found the
    landmark and agree with the fused point within AGREEMENT_DISTANCE.
    """
    from .render import shade

    say = progress or (lambda message: None)
    cameras = detection_cameras()
    say(f"rendering the prior from {len(cameras)} frontal views")
    images, raster = shade(vertices, faces, cameras)
    say("running MediaPipe FaceMesh")
    detections = run_facemesh(images)
    triangle_id = raster.triangle_id.cpu().numpy()
    bary = raster.barycentric.cpu().numpy()
    lifted = []
    for view, xy in enumerate(detections):
        if xy is not None:
            lifted.append(_lift(xy, triangle_id[view], bary[view]))
    say(f"a face was found in {len(lifted)} of {len(cameras)} views")
    if not lifted:
        raise InputError(NO_FACE_MESSAGE)
    return fuse_views(lifted, vertices, faces, len(cameras))


def fuse_views(lifted: list[tuple[np.ndarray, np.ndarray]], vertices: np.ndarray, faces: np.ndarray,
               num_views: int) -> LandmarkEmbedding:
    """Median fusion of per-view (triangle, barycentric) landmark lifts; see `detect_landmarks`."""
    face_ids = np.stack([f for f, _ in lifted])  # (V, 478)
    weights = np.stack([b for _, b in lifted])  # (V, 478, 3)
    found = face_ids >= 0
    corners = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)[face_ids.clip(0)]]  # (V, 478, 3, 3)
    points = np.einsum("vlc,vlcd->vld", weights.astype(np.float64), corners)
    points[~found] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: landmarks no view found
        median = np.nanmedian(points, axis=0)  # (478, 3)
    distance = np.linalg.norm(points - median[None], axis=-1)  # NaN where not found
    distance = np.where(found, distance, np.inf)
    best = np.argmin(distance, axis=0)
    landmarks = np.arange(NUM_LANDMARKS)
    face_index = np.where(found.any(axis=0), face_ids[best, landmarks], -1).astype(np.int64)
    barycentric = np.where(face_index[:, None] >= 0, weights[best, landmarks], 0.0).astype(np.float32)
    confidence = ((distance <= AGREEMENT_DISTANCE).sum(axis=0) / num_views).astype(np.float32)
    confidence[face_index < 0] = 0.0
    return LandmarkEmbedding(face_index=face_index, barycentric=barycentric, confidence=confidence)
