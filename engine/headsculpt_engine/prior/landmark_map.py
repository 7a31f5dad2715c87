"""Landmark maps in the drawing style the face ControlNet (CrucibleAI/ControlNetMediaPipeFace) was
trained on: MediaPipe FaceMesh connection sets as 2-pixel lines on black, iris centres as 4x4 squares,
in fixed colours (DESIGN.md, "Landmark map"). Lines are drawn without antialiasing so that every lit
pixel has exactly one of the spec's colours."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from .landmarks import LEFT_IRIS_CENTER, RIGHT_IRIS_CENTER

BackViewPolicy = Literal["none", "oval"]
BACK_VIEW_POLICIES = ("none", "oval")
LINE_THICKNESS = 2
IRIS_SQUARE = 4

# RGB, as the spec gives them (the reference annotator's BGR tuples after its channel flip).
GROUP_COLOURS: dict[str, tuple[int, int, int]] = {
    "face_oval": (10, 200, 10),
    "left_eye": (10, 200, 180),
    "left_eyebrow": (10, 220, 180),
    "right_eye": (180, 200, 10),
    "right_eyebrow": (180, 220, 10),
    "lips": (10, 180, 10),
}
IRIS_COLOURS: dict[int, tuple[int, int, int]] = {
    RIGHT_IRIS_CENTER: (250, 200, 10),  # landmark 468
    LEFT_IRIS_CENTER: (10, 200, 250),  # landmark 473
}


@dataclass(frozen=True)
class LandmarkGroup:
    name: str
    edges: np.ndarray  # (E, 2) landmark index pairs
    colour: tuple[int, int, int]


# mediapipe's FaceMesh connection sets, written once from the installed mediapipe by
# `write_connections_file()`: drawing a map (every step of a run) then needs neither mediapipe nor its
# numpy < 2 (the lent GPU machines have numpy 2). tests/engine/test_prior_core.py checks the file
# against mediapipe's own lists.
CONNECTIONS_FILE = Path(__file__).with_name("facemesh_connections.json")


def mediapipe_connection_sets() -> dict[str, list[list[int]]]:
    """The connection sets of each group, as mediapipe lists them (sorted index pairs)."""
    from mediapipe.python.solutions import face_mesh_connections as fmc

    sets = {"face_oval": fmc.FACEMESH_FACE_OVAL, "left_eye": fmc.FACEMESH_LEFT_EYE,
            "left_eyebrow": fmc.FACEMESH_LEFT_EYEBROW, "right_eye": fmc.FACEMESH_RIGHT_EYE,
            "right_eyebrow": fmc.FACEMESH_RIGHT_EYEBROW, "lips": fmc.FACEMESH_LIPS}
    return {name: [list(edge) for edge in sorted(sets[name])] for name in GROUP_COLOURS}


def write_connections_file(path: Path = CONNECTIONS_FILE) -> None:
    path.write_text(json.dumps(mediapipe_connection_sets()) + "\n")


@lru_cache(maxsize=1)
def landmark_groups() -> tuple[LandmarkGroup, ...]:
    """The connection sets, in drawing order (later groups draw on top)."""
    sets = json.loads(CONNECTIONS_FILE.read_text())
    return tuple(LandmarkGroup(name, np.array(sets[name], dtype=np.int64).reshape(-1, 2), colour)
                 for name, colour in GROUP_COLOURS.items())


def draw_landmark_map(xy: np.ndarray, visible: np.ndarray, width: int, height: int,
                      oval_only: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 map from landmark pixels `xy` (478, 2) (x right, y down, centres at +0.5).

    A line is drawn when both ends are visible, an iris square when its centre is; `oval_only` draws
    just the face oval (the back-view policy "oval").
    """
    import cv2

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    ok = np.asarray(visible, dtype=bool) & np.all(np.isfinite(xy), axis=1)
    # cv2 takes integer pixel indices: the pixel containing a point is floor(x).
    limit = 4.0 * max(width, height)  # far-off points still draw their in-image part, without overflow
    pix = np.floor(np.clip(np.nan_to_num(xy), -limit, limit)).astype(np.int64)
    for group in landmark_groups():
        if oval_only and group.name != "face_oval":
            continue
        colour = tuple(int(c) for c in group.colour)
        for a, b in group.edges[ok[group.edges[:, 0]] & ok[group.edges[:, 1]]]:
            cv2.line(canvas, (int(pix[a, 0]), int(pix[a, 1])), (int(pix[b, 0]), int(pix[b, 1])), colour,
                     thickness=LINE_THICKNESS, lineType=cv2.LINE_8)
    if not oval_only:
        half = IRIS_SQUARE // 2
        for index, colour in IRIS_COLOURS.items():
            if index < len(ok) and ok[index]:
                x, y = pix[index]
                canvas[max(y - half, 0):max(y + half, 0), max(x - half, 0):max(x + half, 0)] = colour
    return canvas
