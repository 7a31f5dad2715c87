"""Automatic 3D landmarks for any head mesh: MediaPipe FaceMesh on shaded renders from the front and
from the sides, each 2D landmark lifted to the surface through the raster's triangle id and
barycentrics, the views fused (`fusion.py`)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError
from .fusion import ViewLift, fuse_views
from .landmarks import NUM_LANDMARKS, LandmarkEmbedding

# Views (azimuth, polar) in degrees: straight on, turned 15, 30 and 45 degrees to each side (a
# landmark near the face's contour is frontal only in a view turned towards it), above and below.
DETECTION_VIEWS = ((0.0, 90.0), (-15.0, 90.0), (15.0, 90.0), (-30.0, 90.0), (30.0, 90.0),
                   (-45.0, 90.0), (45.0, 90.0), (0.0, 80.0), (0.0, 100.0))
DETECTION_SIZE = 192  # FaceMesh works on a 192x192 crop of the face: more pixels only cost time (measured: no gain)
# A distant, narrow camera (nearly orthographic, as the photos FaceMesh learnt from) framing the face:
# the normalised head has radius 0.7; measured on FLAME it places landmarks closer than a wide one.
DETECTION_RADIUS = 4.0
DETECTION_FOV = 16.0
SEARCH_RADIUS = 3  # pixels: a landmark just off the silhouette takes the nearest covered pixel

NO_FACE_MESSAGE = ("MediaPipe found no face on renders of the prior mesh in any of the 24 axis-aligned "
                   "orientations, so its landmarks cannot be placed automatically. Mark six keypoints on it "
                   "(--keypoints FILE.json; Mark keypoints in Blender), or generate without landmark control "
                   "(--landmarks none), or give a landmark file (a .npy of "
                   f"{NUM_LANDMARKS} vertex indices, one per MediaPipe landmark) with --landmark-file.")


def detection_cameras(device=None):
    from ..cameras import orbit_cameras

    az = [a for a, _ in DETECTION_VIEWS]
    polar = [p for _, p in DETECTION_VIEWS]
    return orbit_cameras(az, polar, DETECTION_RADIUS, DETECTION_FOV, DETECTION_SIZE, DETECTION_SIZE, device=device)


def run_facemesh(images) -> list[np.ndarray | None]:
    """Per RGB image (H, W, 3) uint8: (478, 3) landmarks (x right, y down in pixels; z MediaPipe's
    depth in the same pixel scale, smaller = nearer the camera) or None."""
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
            out.append(np.array([[m.x * w, m.y * h, m.z * w] for m in marks], dtype=np.float64))
    return out


def _search_offsets() -> np.ndarray:
    offsets = [(dy, dx) for dy in range(-SEARCH_RADIUS, SEARCH_RADIUS + 1) for dx in range(-SEARCH_RADIUS, SEARCH_RADIUS + 1)]
    return np.array(sorted(offsets, key=lambda o: o[0] ** 2 + o[1] ** 2), dtype=np.int64)


def lift_pixels(xy: np.ndarray, triangle_id: np.ndarray, bary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangle and barycentrics under each landmark pixel (nearest covered pixel nearby), -1 if none."""
    h, w = triangle_id.shape
    offsets = _search_offsets()  # (K, 2) dy, dx, nearest first
    py = np.floor(xy[:, 1]).astype(np.int64)[:, None] + offsets[None, :, 0]
    px = np.floor(xy[:, 0]).astype(np.int64)[:, None] + offsets[None, :, 1]
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    ids = np.where(inside, triangle_id[py.clip(0, h - 1), px.clip(0, w - 1)], -1)
    covered = ids >= 0
    first = np.argmax(covered, axis=1)
    rows = np.arange(len(xy))
    hit = covered[rows, first]
    faces = np.where(hit, ids[rows, first], -1).astype(np.int64)
    weights = np.where(hit[:, None], bary[py[rows, first].clip(0, h - 1), px[rows, first].clip(0, w - 1)], 0.0)
    return faces, weights.astype(np.float32)


def view_lift(marks: np.ndarray, triangle_id: np.ndarray, bary: np.ndarray, vertices: np.ndarray,
              faces: np.ndarray, face_normals: np.ndarray, eye: np.ndarray) -> ViewLift:
    """One view's FaceMesh landmarks (478, 3) on the surface, with the frontality of each lift."""
    face_index, weights = lift_pixels(marks[:, :2], triangle_id, bary)
    corners = vertices[faces[face_index.clip(0)]]  # (478, 3, 3)
    points = np.einsum("lc,lcd->ld", weights.astype(np.float64), corners)
    to_camera = eye[None] - points
    to_camera /= np.linalg.norm(to_camera, axis=1, keepdims=True).clip(1e-12)
    # Absolute: a surface the camera sees faces it, whichever way the artist's mesh winds its faces.
    frontality = np.where(face_index >= 0, np.abs((face_normals[face_index.clip(0)] * to_camera).sum(axis=1)), -1.0)
    # Image frame (x right, y down, z away) -> right-handed (x right, y up, z towards the camera).
    facemesh_3d = marks * np.array([1.0, -1.0, -1.0])
    return ViewLift(face_index=face_index, points=points, frontality=frontality, facemesh_3d=facemesh_3d)


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(M, 3) unit face normals (zero for degenerate faces)."""
    corners = vertices[faces]
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    return normal / np.linalg.norm(normal, axis=1, keepdims=True).clip(1e-20)


def lift_views(vertices: np.ndarray, faces: np.ndarray, cameras) -> list[ViewLift]:
    """Render, run FaceMesh and lift, per camera; one lift per view where FaceMesh found a face."""
    from .render import SKIN_TONE, shade

    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    normals = face_normals(v, f)
    eyes = cameras.positions().cpu().numpy().astype(np.float64)
    images, raster = shade(vertices, faces, cameras, tone=SKIN_TONE)
    detections = run_facemesh(images)
    triangle_id = raster.triangle_id.cpu().numpy()
    bary = raster.barycentric.cpu().numpy()
    return [view_lift(marks, triangle_id[view], bary[view], v, f, normals, eyes[view])
            for view, marks in enumerate(detections) if marks is not None]


def detect_landmarks(vertices: np.ndarray, faces: np.ndarray,
                     progress: Callable[[str], None] | None = None) -> LandmarkEmbedding:
    """Landmark embedding of a mesh in the normalised frame (face along +Z, +Y up); InputError when
    no view shows a face. Confidence = share of views whose lift agrees with the fused point."""
    say = progress or (lambda message: None)
    cameras = detection_cameras()
    say(f"rendering the prior from {len(cameras)} views and running MediaPipe FaceMesh")
    lifts = lift_views(vertices, faces, cameras)
    say(f"a face was found in {len(lifts)} of {len(cameras)} views")
    if not lifts:
        raise InputError(NO_FACE_MESSAGE)
    return fuse_views(lifts, vertices, faces, len(cameras))
