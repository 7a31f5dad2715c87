"""The orientation search: a head that does not face +Z with +Y up in its file is turned, by one of
the 24 axis-aligned rotations, to the orientation in which MediaPipe's face detector is most confident.

Cheap first: one small frontal render of the mesh as given, scored by the face detector (BlazeFace,
a few milliseconds); only when that is not convincing, one render per orientation, and full landmark
detection on the best-scoring ones.
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
# A face-detector score the mesh as given must reach to skip the search. On FLAME: 0.94 upright;
# sideways and upside-down turns of it score 0.5-0.8.
ACCEPT_SCORE = 0.85
# In the search the mesh as given is ranked as if it scored this much more: a near tie goes to the file.
IDENTITY_PREFERENCE = 0.1
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
    from .render import SKIN_TONE, shade

    cameras = orbit_cameras([0.0] * len(rotations), 90.0, SEARCH_RADIUS, SEARCH_FOV, SEARCH_SIZE, SEARCH_SIZE)
    turn = torch.as_tensor(np.stack(rotations), dtype=cameras.c2w.dtype).transpose(1, 2)
    cameras.c2w = cameras.c2w.clone()
    cameras.c2w[:, :3, :] = turn @ cameras.c2w[:, :3, :]
    images, _ = shade(vertices, faces, cameras, tone=SKIN_TONE)
    return face_scores(images)


def candidate_rotations(vertices: np.ndarray, faces: np.ndarray, say: Callable[[str], None]) -> list[np.ndarray]:
    """The orientations to run full detection on, most promising first: the mesh as given when the face
    detector is sure of it (the usual case, one render), else the best-scoring of all 24. The
    detector also "finds" faces in a head turned sideways or upside down (nostrils as eyes), with
    lower scores, which is why a middling score as given does not settle it."""
    rotations = axis_rotations()
    first = orientation_scores(vertices, faces, rotations[:1])
    if first[0] >= ACCEPT_SCORE:
        return rotations[:1]
    say(f"the face is not clear as the mesh is oriented; scoring all {len(rotations)} axis-aligned orientations")
    scores = np.concatenate([first, orientation_scores(vertices, faces, rotations[1:])])
    ranking = scores + IDENTITY_PREFERENCE * (np.arange(len(scores)) == 0)
    order = [i for i in np.argsort(-ranking, kind="stable") if scores[i] >= MIN_SCORE][:MAX_CANDIDATES]
    return [rotations[i] for i in order] or rotations[:1]


def detect_oriented(vertices: np.ndarray, faces: np.ndarray, detect: Callable[[np.ndarray], LandmarkEmbedding],
                    say: Callable[[str], None]) -> tuple[np.ndarray, LandmarkEmbedding]:
    """(rotation, embedding on the turned mesh `rotation @ vertices`) for the most promising
    orientation whose full detection succeeds; InputError when none does."""
    v = np.asarray(vertices, dtype=np.float64)
    for rotation in candidate_rotations(vertices, faces, say):
        try:
            embedding = detect((v @ rotation.T).astype(np.float32))
        except InputError:
            continue
        if not np.allclose(rotation, np.eye(3)):
            say(f"a face was found with the head turned ({describe(rotation)})")
        return rotation, embedding
    raise InputError(NO_FACE_MESSAGE)


def describe(rotation: np.ndarray) -> str:
    """Plain words for an axis rotation: where the file's +Y (up) and +Z (front) axes end up."""
    names = {(0, 1.0): "+X", (0, -1.0): "-X", (1, 1.0): "+Y", (1, -1.0): "-Y", (2, 1.0): "+Z", (2, -1.0): "-Z"}
    # rotation @ e_j is column j: the engine axis the file's axis j maps to. Inverse: file axis for engine +Y, +Z.
    up = int(np.argmax(np.abs(rotation[1])))
    front = int(np.argmax(np.abs(rotation[2])))
    return f"the file's {names[(up, float(np.sign(rotation[1, up])))]} axis is up, {names[(front, float(np.sign(rotation[2, front])))]} faces front"
