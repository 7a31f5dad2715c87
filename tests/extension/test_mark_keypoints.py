"""The Mark keypoints tool's event handling. Background Blender cannot run a modal operator, so the
operator's own invoke() and modal() are called on stand-ins for `self`, the context's area and window
manager, and events (checked against Blender's event enums); clicks cast real rays on a real Suzanne,
through a stand-in for the view that turns a region pixel into a ray."""
from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from test_keypoint_tool import make_suzanne

pytestmark = pytest.mark.bpy

RIGHT_EYE, LEFT_EYE, NOSE = ("outer corner of the character's right eye", "outer corner of the character's left eye",
                             "tip of the nose")


@dataclass
class Event:
    type: str
    value: str = "PRESS"
    mouse_region_x: int = 0
    mouse_region_y: int = 0
    ctrl: bool = False

    def __post_init__(self):
        import bpy

        for name in ("type", "value"):
            items = bpy.types.Event.bl_rna.properties[name].enum_items
            assert getattr(self, name) in items, f"{getattr(self, name)!r} is no Blender event {name}"


class Area:
    type = "VIEW_3D"

    def __init__(self):
        self.header: str | None = None

    def header_text_set(self, text):
        self.header = text


class View:
    """Region pixel (x, 0) -> a ray; `aim(point, normal)` gives the pixel of a ray onto that point from
    just outside along its normal."""

    def __init__(self):
        self.rays: list = []

    def aim(self, point, normal) -> tuple[int, int]:
        from mathutils import Vector

        normal = Vector(normal).normalized()
        self.rays.append((Vector(point) + 0.001 * normal, -normal))
        return len(self.rays) - 1, 0

    def ray(self, region, region_data, x: int, y: int):
        return self.rays[x]


class Tool:
    """The operator as Blender would run it, on stand-ins."""

    def __init__(self, bpy, monkeypatch, view: View):
        from headsculpt_blender import operators

        monkeypatch.setattr(operators, "view_ray", view.ray)
        self.cls = operators.HEADSCULPT_OT_mark_keypoints
        self.area, self.handlers = Area(), []
        self.context = SimpleNamespace(scene=bpy.context.scene, area=self.area, region=None, region_data=None,
                                       window_manager=SimpleNamespace(modal_handler_add=self.handlers.append),
                                       evaluated_depsgraph_get=bpy.context.evaluated_depsgraph_get)
        self.operator = SimpleNamespace(report=lambda kinds, message: None)
        self.view = view

    def invoke(self) -> set:
        return self.cls.invoke(self.operator, self.context, Event("LEFTMOUSE"))

    def send(self, event: Event) -> set:
        return self.cls.modal(self.operator, self.context, event)

    def click(self, point, normal) -> set:
        x, y = self.view.aim(point, normal)
        return self.send(Event("LEFTMOUSE", mouse_region_x=x, mouse_region_y=y))


def world_triangles(bpy, obj) -> tuple[np.ndarray, np.ndarray]:
    """The centres and unit normals of the shown mesh's triangles (those a raycast meets) in world
    coordinates: a ray along a normal onto its centre meets the triangle inside it (one aimed at a
    vertex can slip between faces)."""
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    try:
        centers = np.array([tuple(triangle.center) for triangle in mesh.loop_triangles])
        normals = np.array([tuple(triangle.normal) for triangle in mesh.loop_triangles])
    finally:
        evaluated.to_mesh_clear()
    world = np.array(obj.matrix_world)
    normals = normals @ np.linalg.inv(world[:3, :3])  # the inverse transpose, applied to row vectors
    return centers @ world[:3, :3].T + world[:3, 3], normals / np.linalg.norm(normals, axis=1, keepdims=True)


@pytest.fixture
def suzanne(bpy, scene):
    obj = make_suzanne(bpy)
    scene.headsculpt.prior = obj
    return obj


def marked(suzanne) -> dict:
    """name -> the keypoint's world location, as the viewport shows it."""
    from headsculpt_blender import keypoints

    return {name: np.array(suzanne.matrix_world @ empty.location)
            for name, empty in keypoints.keypoint_objects(suzanne).items()}


def test_clicks_mark_the_keypoints_in_order_backspace_takes_back_and_the_sixth_finishes(
        bpy, scene, suzanne, monkeypatch, tmp_path):
    from headsculpt_blender import keypoints
    from headsculpt_blender.frames import blender_to_engine

    st = scene.headsculpt
    centers, normals = world_triangles(bpy, suzanne)
    tool = Tool(bpy, monkeypatch, View())
    assert tool.invoke() == {"RUNNING_MODAL"} and len(tool.handlers) == 1
    assert st.landmark_mode == "keypoints"
    assert tool.area.header.startswith(f"Click the {RIGHT_EYE} (1 of 6)")

    # Viewport navigation and releases pass through; a click on nothing marks nothing.
    assert tool.send(Event("MOUSEMOVE", "NOTHING")) == {"PASS_THROUGH"}
    assert tool.send(Event("MIDDLEMOUSE")) == {"PASS_THROUGH"}
    assert tool.click(np.array(suzanne.location) + (0.0, 0.0, 5.0), (0.0, 0.0, -1.0)) == {"RUNNING_MODAL"}  # up, away
    assert marked(suzanne) == {} and tool.area.header.startswith(f"Click the {RIGHT_EYE} (1 of 6)")

    # Two clicks, then both taken back (Backspace, Ctrl+Z); Backspace's release is not a second step back.
    indices = [7 * number for number in range(6)]
    assert tool.click(centers[indices[0]], normals[indices[0]]) == {"RUNNING_MODAL"}
    assert tool.area.header.startswith(f"Click the {LEFT_EYE} (2 of 6)")
    assert np.allclose(marked(suzanne)["right_eye_outer"], centers[indices[0]], atol=1e-4)
    tool.click(centers[indices[1]], normals[indices[1]])
    assert tool.send(Event("BACK_SPACE")) == {"RUNNING_MODAL"}
    assert tool.send(Event("BACK_SPACE", "RELEASE")) == {"PASS_THROUGH"}
    assert list(marked(suzanne)) == ["right_eye_outer"] and "(2 of 6)" in tool.area.header
    assert tool.send(Event("Z", ctrl=True)) == {"RUNNING_MODAL"}
    assert marked(suzanne) == {} and "(1 of 6)" in tool.area.header

    results = [tool.click(centers[index], normals[index]) for index in indices]
    assert results == [{"RUNNING_MODAL"}] * 5 + [{"FINISHED"}]
    assert tool.area.header is None
    assert st.status == "All keypoints marked: Generate uses them"
    points = marked(suzanne)
    assert sorted(points) == sorted(keypoints.NAMES)
    for name, index in zip(keypoints.NAMES, indices):
        assert np.allclose(points[name], centers[index], atol=1e-4), name

    saved = tmp_path / "keypoints.json"
    assert bpy.ops.headsculpt.save_keypoints(filepath=str(saved)) == {"FINISHED"}
    written = json.loads(saved.read_text())["keypoints"]
    expected = blender_to_engine(centers[indices])
    assert list(written) == list(keypoints.NAMES)
    assert np.allclose([written[name] for name in keypoints.NAMES], expected, atol=1e-4)


def test_cancel_leaves_the_keypoints_as_they_were(bpy, scene, suzanne, monkeypatch):
    st = scene.headsculpt
    centers, normals = world_triangles(bpy, suzanne)
    tool = Tool(bpy, monkeypatch, View())

    st.prior = None
    assert tool.invoke() == {"CANCELLED"} and tool.handlers == []
    assert st.last_error == "Pick the head mesh as the prior first, then mark its keypoints."
    st.prior = suzanne

    # A first run cancelled after two clicks: nothing marked, the Landmarks choice as it was.
    assert st.landmark_mode == "auto"
    tool.invoke()
    tool.click(centers[0], normals[0])
    tool.click(centers[7], normals[7])
    assert len(marked(suzanne)) == 2
    assert tool.send(Event("RIGHTMOUSE")) == {"CANCELLED"}
    assert marked(suzanne) == {} and st.landmark_mode == "auto" and tool.area.header is None
    assert st.status == "Mark keypoints cancelled: the keypoints are as they were"

    # Enter keeps what is marked; the next run asks for the rest.
    tool.invoke()
    tool.click(centers[0], normals[0])
    tool.click(centers[7], normals[7])
    assert tool.send(Event("RET")) == {"FINISHED"}
    assert st.status == "2 of 6 keypoints marked" and st.landmark_mode == "keypoints"
    kept = marked(suzanne)
    tool.invoke()
    assert tool.area.header.startswith(f"Click the {NOSE} (1 of 4)")
    for index in (14, 21, 28, 35):
        tool.click(centers[index], normals[index])
    before = marked(suzanne)
    assert len(before) == 6 and all(np.array_equal(kept[name], before[name]) for name in kept)

    # All marked: a run goes round again moving them, and Esc puts the moved ones back.
    tool.invoke()
    assert tool.area.header.startswith(f"Click the {RIGHT_EYE} (1 of 6)")
    tool.click(centers[42], normals[42])
    tool.click(centers[49], normals[49])
    assert np.allclose(marked(suzanne)["right_eye_outer"], centers[42], atol=1e-4)
    assert tool.send(Event("ESC")) == {"CANCELLED"}
    after = marked(suzanne)
    assert sorted(after) == sorted(before)
    assert all(np.allclose(after[name], before[name], atol=1e-6) for name in before)
    assert st.landmark_mode == "keypoints"
