"""The head prior as the artist picked it: mesh arrays from the scene, and the panel's badge.

`badge` is plain logic on counts and the engine's PriorInfo so that it is testable without a scene.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .frames import local_to_engine

FLAME_VERTEX_COUNT = 5023
FLAME_FACE_COUNTS = (9976, 10034)  # FLAME 2020 / 2023 (the latter with closed eye and mouth regions)
MAX_FACES = 2_000_000  # the engine refuses more (api-contract: 413)
NO_LANDMARK_CONTROL = "no landmark control: expect weaker view consistency"  # the engine's own words
LANDMARK_COUNT = 478  # MediaPipe FaceMesh with irises


@dataclass(frozen=True)
class Badge:
    """What the panel says about the chosen prior: an icon name, one line, and whether it can serve."""

    icon: str
    text: str
    usable: bool


def is_flame_counts(vertex_count: int, face_count: int) -> bool:
    return vertex_count == FLAME_VERTEX_COUNT and face_count in FLAME_FACE_COUNTS


def badge(object_type: str | None, vertex_count: int = 0, face_count: int = 0,
          prior_info: dict | None = None, landmark_mode: str = "auto") -> Badge:
    """Describe a prior candidate. `face_count` counts triangles; `prior_info` is the engine's PriorInfo
    for this very mesh, when it has been uploaded; `landmark_mode` the panel's Landmarks choice."""
    if object_type is None:
        return Badge("INFO", "Pick a head mesh in the scene, or add the base head", False)
    if object_type != "MESH":
        kind = object_type.lower().replace("_", " ")
        return Badge("ERROR", f"This {kind} is not a mesh, so it cannot be a head prior: pick a mesh", False)
    if vertex_count == 0 or face_count == 0:
        return Badge("ERROR", "This mesh has no faces, so it cannot be a head prior", False)
    if face_count > MAX_FACES:
        return Badge("ERROR", f"{face_count:,} triangles is more than the engine takes "
                              f"({MAX_FACES:,}): decimate the mesh", False)
    if landmark_mode == "none":
        return Badge("INFO", f"Head mesh ({vertex_count:,} vertices): {NO_LANDMARK_CONTROL}", True)
    if is_flame_counts(vertex_count, face_count):
        return Badge("CHECKMARK", f"FLAME head ({vertex_count} vertices, {face_count} faces)", True)
    if prior_info is None and landmark_mode == "keypoints":
        return Badge("QUESTION", f"Head mesh ({vertex_count:,} vertices): landmarks follow the keypoints "
                                 "marked on it", True)
    if prior_info is None:
        return Badge("QUESTION", f"Other head mesh ({vertex_count:,} vertices, {face_count:,} triangles): "
                                 "landmarks are found on upload", True)
    landmarks = prior_info.get("landmarks") or {}
    if landmarks.get("status") == "found":
        return Badge("CHECKMARK", f"Head with {landmarks.get('count', 0)} face landmarks found", True)
    reason = landmarks.get("message") or "no face was found on it"
    return Badge("ERROR", f"No face landmarks on this mesh: {reason}", False)


def mesh_arrays(obj, depsgraph) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N,3) in the engine canonical frame and triangles (M,3) of `obj` as it is shown
    (modifiers, shape keys and pose applied), read in bulk."""
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        local = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", local)
        triangles = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int32)
        mesh.loop_triangles.foreach_get("vertices", triangles)
    finally:
        evaluated.to_mesh_clear()
    return local_to_engine(local.reshape(-1, 3), obj.matrix_world), triangles.reshape(-1, 3)


def object_counts(obj) -> tuple[int, int]:
    """Vertex and triangle counts of the object's own mesh data, cheap enough for drawing the panel."""
    mesh = obj.data
    vertex_count = len(mesh.vertices)
    # loop_totals - 2 triangles per polygon; FLAME is all triangles, so this equals len(polygons) there.
    totals = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("loop_total", totals)
    return vertex_count, int(np.maximum(totals - 2, 0).sum())


def object_badge(obj, prior_info: dict | None, landmark_mode: str = "auto") -> Badge:
    if obj is None:
        return badge(None)
    if obj.type != "MESH":
        return badge(obj.type)
    return badge("MESH", *object_counts(obj), prior_info=prior_info, landmark_mode=landmark_mode)


def load_landmark_indices(path: str | Path, vertex_count: int) -> list[int]:
    """A FLAME vertex index per MediaPipe landmark (478; -1 for one that cannot be placed), from .npy
    (the engine's `--landmark-file` format; never unpickled) or a JSON list. Raises ValueError with a
    sentence for the panel."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            values = np.asarray(json.loads(path.read_text()))
    except (OSError, ValueError) as error:
        raise ValueError(f"The landmark index file {path.name} cannot be read ({error}).") from None
    values = np.asarray(values).reshape(-1)
    if values.size != LANDMARK_COUNT or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"The landmark index file {path.name} must hold {LANDMARK_COUNT} integers "
                         f"(one vertex per MediaPipe landmark); it holds {values.size} values of {values.dtype}.")
    if values.min() < -1 or values.max() >= vertex_count:
        raise ValueError(f"The landmark index file {path.name} names vertices outside 0..{vertex_count - 1} "
                         "(-1 marks a landmark left out).")
    return values.astype(int).tolist()
