"""The orientation search: a head that does not face +Z with +Y up in its file is turned, by one of
the 24 axis-aligned rotations, to the orientation in which MediaPipe's face detector is most confident.

Cheap first: one small frontal render per orientation, scored by the face detector (BlazeFace, a few
milliseconds each); full landmark detection then runs on the best-scoring orientations only.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from ..errors import InputError
from .detect import NO_FACE_MESSAGE
from .landmarks import LandmarkEmbedding

SEARCH_SIZE = 192
SEARCH_RADIUS = 2.6  # frames the whole normalised head (radius 0.7) with this field of view
SEARCH_FOV = 32.0
MIN_SCORE = 0.3
# Full detection is tried on at most this many of the best-scoring orientations.
MAX_CANDIDATES = 3


def axis_rotations() -> list[np.ndarray]:
    """The 24 proper rotations that map coordinate axes onto coordinate axes, the identity first."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            matrix[np.arange(3), perm] = signs
            if np.linalg.det(matrix) > 0:
                out.append(matrix)
    out.sort(key=lambda m: -np.trace(m))  # the identity (trace 3) first, half turns last
    return out


def face_scores(images: np.ndarray) -> np.ndarray:
    """Per RGB image, the face detector's best score (0 where it sees no face)."""
    import mediapipe as mp

    from ..quiet import native_stderr_silenced

    scores = np.zeros(len(images))
    with native_stderr_silenced(), mp.solutions.face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=MIN_SCORE) as detector:
        for i, image in enumerate(images):
            result = detector.process(np.ascontiguousarray(image))
            if result.detections:
                scores[i] = max(float(d.score[0]) for d in result.detections)
    return scores


def orientation_scores(vertices: np.ndarray, faces: np.ndarray, rotations: list[np.ndarray]) -> np.ndarray:
    """Face-detector score of one frontal render of the mesh turned by each rotation. The mesh stays;
    the camera turns the other way (seeing R @ mesh from C is seeing the mesh from R^T C), so that
    all orientations render in one batch."""
    import torch

    from ..cameras import orbit_cameras
    from .render import shade

    cameras = orbit_cameras([0.0] * len(rotations), 90.0, SEARCH_RADIUS, SEARCH_FOV, SEARCH_SIZE, SEARCH_SIZE)
    turn = torch.as_tensor(np.stack(rotations), dtype=cameras.c2w.dtype).transpose(1, 2)
    cameras.c2w = cameras.c2w.clone()
    cameras.c2w[:, :3, :] = turn @ cameras.c2w[:, :3, :]
    images, _ = shade(vertices, faces, cameras)
    return face_scores(images)


def search_orientation(vertices: np.ndarray, faces: np.ndarray,
                       detect: Callable[[np.ndarray], LandmarkEmbedding],
                       say: Callable[[str], None]) -> tuple[np.ndarray, LandmarkEmbedding]:
    """(rotation, embedding on the turned mesh) for the most confident orientation other than the
    identity (the caller has tried that one); InputError when none shows a face."""
    rotations = axis_rotations()[1:]
    say(f"no face as the mesh is oriented; trying {len(rotations)} other orientations")
    scores = orientation_scores(vertices, faces, rotations)
    order = [i for i in np.argsort(-scores) if scores[i] >= MIN_SCORE][:MAX_CANDIDATES]
    v = np.asarray(vertices, dtype=np.float64)
    for i in order:
        try:
            embedding = detect((v @ rotations[i].T).astype(np.float32))
        except InputError:
            continue
        say(f"a face was found with the head turned ({describe(rotations[i])})")
        return rotations[i], embedding
    raise InputError(NO_FACE_MESSAGE)


def describe(rotation: np.ndarray) -> str:
    """Plain words for an axis rotation: where the file's +Y (up) and +Z (front) axes end up."""
    names = {(0, 1.0): "+X", (0, -1.0): "-X", (1, 1.0): "+Y", (1, -1.0): "-Y", (2, 1.0): "+Z", (2, -1.0): "-Z"}
    # rotation @ e_j is column j: the engine axis the file's axis j maps to. Inverse: file axis for engine +Y, +Z.
    up = int(np.argmax(np.abs(rotation[1])))
    front = int(np.argmax(np.abs(rotation[2])))
    return f"the file's {names[(up, float(np.sign(rotation[1, up])))]} axis is up, {names[(front, float(np.sign(rotation[2, front])))]} faces front"
