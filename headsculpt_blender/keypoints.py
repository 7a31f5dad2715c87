"""Keypoints marked on the prior for guided landmarks (the engine's prior/keypoints.py carries its
478-point layout onto the mesh through them), when no face is found on a head.

Each keypoint is an empty parented to the prior (so it moves with it, and shows where it was put),
located in the prior's local coordinates. The modal tool in operators.py only turns clicks into
`add_keypoint` calls; everything here is plain code that tests call directly.
"""
from __future__ import annotations

import json
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix, Vector

from .frames import blender_to_engine, local_to_engine

# The engine's names, in the order the tool asks for them; left and right are the character's own.
KEYPOINTS = (("right_eye_outer", "outer corner of the character's right eye"),
             ("left_eye_outer", "outer corner of the character's left eye"),
             ("nose_tip", "tip of the nose"),
             ("mouth_right", "right corner of the mouth"),
             ("mouth_left", "left corner of the mouth"),
             ("chin", "bottom of the chin"))
NAMES = tuple(name for name, _ in KEYPOINTS)
PROP_KEYPOINT = "headsculpt_keypoint"
MARKER_SHARE = 0.02  # an empty's display size against the prior's largest dimension


def keypoint_objects(prior) -> dict:
    """name -> the empty marking it, for the prior's keypoints."""
    return {child[PROP_KEYPOINT]: child for child in prior.children if child.get(PROP_KEYPOINT) in NAMES}


def next_keypoint(prior) -> str | None:
    """The first keypoint not yet marked, in the tool's order; None when all are."""
    marked = keypoint_objects(prior)
    return next((name for name in NAMES if name not in marked), None)


def describe(name: str) -> str:
    return dict(KEYPOINTS)[name]


def add_keypoint(prior, name: str, world_location) -> object:
    """Mark keypoint `name` at a point on the prior given in world coordinates (a raycast hit); marking
    it again moves it. Returns the empty."""
    if name not in NAMES:
        raise ValueError(f"{name!r} is not a keypoint; the keypoints are {', '.join(NAMES)}.")
    empty = keypoint_objects(prior).get(name)
    if empty is None:
        empty = bpy.data.objects.new(f"{prior.name} keypoint {name}", None)
        empty[PROP_KEYPOINT] = name
        empty.empty_display_type = "SPHERE"
        empty.empty_display_size = MARKER_SHARE * max(max(prior.dimensions), 1e-6)
        for collection in prior.users_collection:
            collection.objects.link(empty)
        empty.parent = prior
        empty.matrix_parent_inverse = Matrix.Identity(4)
    empty.location = prior.matrix_world.inverted() @ Vector(world_location)
    return empty


def remove_keypoint(prior, name: str) -> None:
    empty = keypoint_objects(prior).get(name)
    if empty is not None:
        bpy.data.objects.remove(empty)


def _local_points(prior) -> np.ndarray:
    marked = keypoint_objects(prior)
    missing = [name for name in NAMES if name not in marked]
    if missing:
        raise ValueError(f"Mark all {len(NAMES)} keypoints on {prior.name} first (missing: "
                         f"{', '.join(describe(name) for name in missing)}); use Mark keypoints.")
    return np.array([tuple(marked[name].location) for name in NAMES], dtype=np.float64)


def keypoints_payload(prior) -> dict[str, list[float]]:
    """{name: [x, y, z]} in the frame the prior's mesh is sent to the engine in (prior.mesh_arrays):
    what the job's upload carries. ValueError with a sentence when some are not marked."""
    points = local_to_engine(_local_points(prior), prior.matrix_world)
    return {name: [float(c) for c in point] for name, point in zip(NAMES, points)}


def save_keypoints(prior, path: str | Path) -> Path:
    """Write the keypoint file `headsculpt generate --keypoints` reads, in the coordinates Blender's OBJ
    and glTF exporters write the prior in (Y up, the object's transform applied)."""
    world = np.array(prior.matrix_world, dtype=np.float64)
    local = _local_points(prior)
    points = blender_to_engine(local @ world[:3, :3].T + world[:3, 3])
    path = Path(path)
    path.write_text(json.dumps({"keypoints": {name: [float(c) for c in p] for name, p in zip(NAMES, points)}},
                               indent=2))
    return path


def mark_hit(prior, name: str, hit_object, world_location) -> bool:
    """A click's raycast result: mark `name` there when the ray hit the prior; whether it did."""
    if hit_object is None or prior is None or getattr(hit_object, "original", hit_object).name != prior.name:
        return False
    add_keypoint(prior, name, world_location)
    return True
