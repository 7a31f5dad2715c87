"""Keypoints marked on the prior for guided landmarks (the engine's prior/keypoints.py carries its
478-point layout onto the mesh through them), when no face is found on a head.

Each keypoint is an empty parented to the prior (so it moves with it, and shows where it was put),
located in the prior's local coordinates. The Mark keypoints tool's logic is `MarkingTool`: the modal
operator in operators.py only hands it events and the view's ray through a pixel, so everything here is
plain code that tests call directly.
"""
from __future__ import annotations

import json
from collections.abc import Callable
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


Ray = tuple[Vector, Vector]  # origin and direction, in world coordinates


class MarkingTool:
    """The Mark keypoints tool, apart from the viewport: which keypoints it asks for and how far it got.
    A left click on the prior marks the next keypoint; Backspace or Ctrl+Z takes the last click back;
    Enter stops, keeping what is marked; Esc or right click cancels, leaving every keypoint as it was
    before the tool started (so a cancelled run leaves nothing half-done behind)."""

    def __init__(self, prior) -> None:
        self.prior = prior
        missing = [name for name in NAMES if name not in keypoint_objects(prior)]
        self.order = missing or list(NAMES)  # all marked already: go round again, moving them
        self._before: list[Vector | None] = []  # for each click so far, where its keypoint was (None: unmarked)
        self.status = ""  # the panel's status line once the tool stopped; empty while it runs

    @property
    def step(self) -> int:
        return len(self._before)

    @property
    def header(self) -> str | None:
        """The viewport header's line while the tool runs; None once it stopped."""
        if self.status:
            return None
        return (f"Click the {describe(self.order[self.step])} ({self.step + 1} of {len(self.order)}); "
                "Backspace: back, Enter: done, Esc: cancel")

    def handle(self, context, event, ray_at: Callable[[int, int], Ray]) -> set[str]:
        """One viewport event (`type`, `value`, `ctrl`, `mouse_region_x`, `mouse_region_y`): what the modal
        operator returns for it. `ray_at(x, y)` is the view's ray through that region pixel; a click casts
        it on the scene."""
        if event.value != "PRESS":
            return {"PASS_THROUGH"}
        if event.type in {"ESC", "RIGHTMOUSE"}:
            while self._before:
                self._take_back()
            return self._stop("Mark keypoints cancelled: the keypoints are as they were", {"CANCELLED"})
        if event.type in {"RET", "NUMPAD_ENTER"}:
            return self._stop(f"{len(keypoint_objects(self.prior))} of {len(NAMES)} keypoints marked", {"FINISHED"})
        if event.type == "BACK_SPACE" or (event.type == "Z" and event.ctrl):
            if self._before:
                self._take_back()
            return {"RUNNING_MODAL"}  # Ctrl+Z never reaches Blender's undo, which would undo behind the tool
        if event.type == "LEFTMOUSE":
            origin, direction = ray_at(event.mouse_region_x, event.mouse_region_y)
            hit, location, _, _, obj, _ = context.scene.ray_cast(context.evaluated_depsgraph_get(), origin, direction)
            if hit and self._mark(obj, location) and self.step == len(self.order):
                return self._stop("All keypoints marked: Generate uses them", {"FINISHED"})
            return {"RUNNING_MODAL"}
        return {"PASS_THROUGH"}  # viewport navigation keeps working

    def _mark(self, hit_object, world_location) -> bool:
        name = self.order[self.step]
        empty = keypoint_objects(self.prior).get(name)
        before = None if empty is None else empty.location.copy()
        if not mark_hit(self.prior, name, hit_object, world_location):
            return False
        self._before.append(before)
        return True

    def _take_back(self) -> None:
        name, before = self.order[self.step - 1], self._before.pop()
        if before is None:
            remove_keypoint(self.prior, name)
        else:
            keypoint_objects(self.prior)[name].location = before

    def _stop(self, status: str, result: set[str]) -> set[str]:
        self.status = status
        return result
