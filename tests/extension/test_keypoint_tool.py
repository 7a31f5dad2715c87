"""Issue 14 in Blender: after "no face found" the panel offers both ways on (Mark keypoints, Generate
without landmark control); keypoints marked by the tool's functions reach the job's upload in the
frame of the mesh sent with it; the saved keypoint file matches Blender's own OBJ export."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import poll_until, use_engine
from test_panel import draw, texts

pytestmark = pytest.mark.bpy

NO_LANDMARK_CONTROL = "No landmark control: expect weaker view consistency"


def make_suzanne(bpy):
    """A subdivided Suzanne, turned, scaled and moved, so that frames cannot agree by accident."""
    bpy.ops.mesh.primitive_monkey_add(size=0.25, location=(0.3, -0.2, 1.5), rotation=(0.0, 0.0, 0.4))
    suzanne = bpy.context.active_object
    suzanne.scale = (1.2, 1.2, 1.2)
    suzanne.modifiers.new("subdivide", "SUBSURF").levels = 1
    bpy.context.view_layer.update()
    return suzanne


def world_vertices(bpy, obj) -> np.ndarray:
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    try:
        local = np.array([tuple(v.co) for v in mesh.vertices])
    finally:
        evaluated.to_mesh_clear()
    world = np.array(obj.matrix_world)
    return local @ world[:3, :3].T + world[:3, 3]


def mark_all(bpy, suzanne) -> dict:
    """Every keypoint at a vertex of the shown mesh, as a raycast hit on it would give; name -> index."""
    from headsculpt_blender import keypoints

    vertices = world_vertices(bpy, suzanne)
    chosen = {}
    for number, name in enumerate(keypoints.NAMES):
        index = 7 * number + 3
        assert keypoints.mark_hit(suzanne, name, suzanne, vertices[index])
        chosen[name] = index
    return chosen


def test_after_no_face_found_the_panel_offers_keypoints_and_no_landmark_control(bpy, scene):
    from fake_engine import FakeEngine
    from headsculpt_blender.panel import HEADSCULPT_PT_main

    st = scene.headsculpt
    st.prior = make_suzanne(bpy)
    st.prompt = "a monkey"
    calls = draw(bpy, HEADSCULPT_PT_main)
    assert "Generate without landmark control" not in texts(calls) + [c[2].get("text") for c in calls]
    with FakeEngine(landmarks_found=False) as engine:
        use_engine(engine.url)
        assert bpy.ops.headsculpt.generate() == {"FINISHED"}
        poll_until(scene, lambda: st.job_state == "")
        assert "no face" in st.last_error and engine.jobs == {}
        calls = draw(bpy, HEADSCULPT_PT_main)
        operators = [(c[1][0], c[2].get("text")) for c in calls if c[0] == "operator"]
        assert ("headsculpt.mark_keypoints", None) in operators
        assert ("headsculpt.generate", "Generate without landmark control") in operators

        # The second way on: the panel's button, as Blender runs it.
        assert bpy.ops.headsculpt.generate(landmarks="none") == {"FINISHED"}
        poll_until(scene, lambda: st.result_object is not None)
        assert st.landmark_mode == "none"
        assert engine.upload_bodies[-1].get("detect_landmarks") is False
        (job,) = engine.jobs.values()
        assert job["body"]["landmarks"] == "none"
        assert NO_LANDMARK_CONTROL in texts(draw(bpy, HEADSCULPT_PT_main))


def test_keypoints_from_the_tool_functions_reach_the_job_request(bpy, scene, tmp_path):
    from fake_engine import FakeEngine
    from headsculpt_blender import keypoints
    from headsculpt_blender.panel import HEADSCULPT_PT_main
    from headsculpt_blender.prior import mesh_arrays

    st = scene.headsculpt
    suzanne = make_suzanne(bpy)
    st.prior, st.prompt = suzanne, "a monkey"
    bpy.ops.mesh.primitive_cube_add(location=(3.0, 0.0, 0.0))
    assert not keypoints.mark_hit(suzanne, "chin", bpy.context.active_object, (3.0, 0.0, 1.0))  # not the prior
    st.landmark_mode = "keypoints"
    with pytest.raises(RuntimeError, match="Mark all 6 keypoints"):  # none marked yet: refused, not sent
        bpy.ops.headsculpt.generate()
    assert "Mark all 6 keypoints" in st.last_error and "tip of the nose" in st.last_error
    chosen = mark_all(bpy, suzanne)
    assert keypoints.next_keypoint(suzanne) is None
    assert "6 of 6 keypoints marked" in texts(draw(bpy, HEADSCULPT_PT_main))
    # Marking again moves the point rather than adding one.
    keypoints.mark_hit(suzanne, "chin", suzanne, world_vertices(bpy, suzanne)[chosen["chin"]])
    assert len(keypoints.keypoint_objects(suzanne)) == 6

    sent_vertices, _ = mesh_arrays(suzanne, bpy.context.evaluated_depsgraph_get())
    with FakeEngine() as engine:
        use_engine(engine.url)
        assert bpy.ops.headsculpt.generate() == {"FINISHED"}
        poll_until(scene, lambda: st.job_state in ("queued", "running", "done"))
    sent = engine.upload_bodies[-1]["keypoints"]
    assert list(sent) == list(keypoints.NAMES)
    for name, index in chosen.items():  # each keypoint is the very vertex it was marked on, as uploaded
        assert np.allclose(sent[name], sent_vertices[index], atol=1e-5), name
    (job,) = engine.jobs.values()
    assert "landmarks" not in job["body"]  # guided landmarks are landmark control

    # The saved file is in the frame Blender's OBJ export writes the prior in.
    saved = tmp_path / "keypoints.json"
    assert bpy.ops.headsculpt.save_keypoints(filepath=str(saved)) == {"FINISHED"}
    points = json.loads(saved.read_text())["keypoints"]
    obj_path = tmp_path / "suzanne.obj"
    bpy.ops.object.select_all(action="DESELECT")
    suzanne.select_set(True)
    bpy.ops.wm.obj_export(filepath=str(obj_path), export_selected_objects=True, export_materials=False)
    exported = np.array([[float(c) for c in line.split()[1:4]] for line in obj_path.read_text().splitlines()
                         if line.startswith("v ")])
    for name, index in chosen.items():
        assert np.abs(exported[index] - points[name]).max() < 1e-4, name
