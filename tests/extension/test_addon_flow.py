"""The add-on's operators and polling step against a stand-in engine (tests/extension/fake_engine.py):
Generate, import and placement, Edit avatar, and every refusal (Make animatable: test_animate.py).
bpy runs in-process."""
from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from fake_engine import FakeEngine
from helpers import poll_until, use_engine

pytestmark = pytest.mark.bpy


def import_flame(bpy, path):
    """The FLAME head as Blender imports it: the OBJ importer's default axes (file Y up -> Blender Z up)
    leave the mesh data as in the file and rotate the object +90 degrees about X."""
    before = set(bpy.data.objects)
    bpy.ops.wm.obj_import(filepath=str(path))
    (head,) = [obj for obj in bpy.data.objects if obj not in before]
    return head


def refused(operator) -> str:
    """Run an operator that must refuse: Blender turns its error report into RuntimeError for scripts."""
    with pytest.raises(RuntimeError) as error:
        operator()
    return str(error.value)


def obj_vertices(path) -> np.ndarray:
    lines = [line.split()[1:4] for line in open(path) if line.startswith("v ")]
    return np.array(lines, dtype=np.float64)


def nearest_distance(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest reference point (the importer may reorder vertices)."""
    from scipy.spatial import cKDTree

    return cKDTree(reference).query(points)[0]


def world_vertices(obj) -> np.ndarray:
    mesh = obj.data
    co = np.empty(len(mesh.vertices) * 3)
    mesh.vertices.foreach_get("co", co)
    matrix = np.array(obj.matrix_world)
    return co.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]


def generate(bpy, scene, prior, prompt="an old bearded man"):
    st = scene.headsculpt
    st.prior, st.prompt, st.preset, st.seed = prior, prompt, "tiny", 7
    assert bpy.ops.headsculpt.generate() == {"FINISHED"}
    from headsculpt_blender import jobs
    # Interactive Blender refreshes on a timer (timers never fire in background mode: tests poll).
    assert bpy.app.timers.is_registered(jobs._timers[scene.name])
    poll_until(scene, lambda: st.result_object is not None)
    return st.result_object


def submit_job(bpy, scene, engine, prior, until: str = "running") -> None:
    """Point the add-on at `engine`, generate "a knight" on `prior`, and poll until the job is in `until`."""
    st = scene.headsculpt
    use_engine(engine.url)
    st.prior, st.prompt = prior, "a knight"
    assert bpy.ops.headsculpt.generate() == {"FINISHED"}
    poll_until(scene, lambda: st.job_state == until)


def test_flame_prior_badge_and_landmark_preview(bpy, scene, flame_template):
    from headsculpt_blender.operators import known_prior_info
    from headsculpt_blender.prior import object_badge

    head = import_flame(bpy, flame_template)
    st = scene.headsculpt
    st.prior = head
    assert object_badge(head, None).text.startswith("FLAME head (5023 vertices, 9976 faces)")
    with FakeEngine() as engine:
        use_engine(engine.url)
        assert bpy.ops.headsculpt.preview_landmarks() == {"FINISHED"}
        poll_until(scene, lambda: st.landmark_image is not None)
        assert tuple(st.landmark_image.size) == (32, 32)
        assert known_prior_info(scene, head)["is_flame"] is True
        # The engine got the head as FLAME defines it (+Y up, face along +Z): the file's own coordinates.
        sent = next(iter(engine.priors.values()))[0]
        assert np.abs(sent - obj_vertices(flame_template)).max() < 1e-6


def test_generate_places_avatar_exactly_on_the_prior(bpy, scene, flame_template):
    from headsculpt_blender.properties import PROP_JOB, PROP_PRIOR, PROP_PROMPT, PROP_SEED

    head = import_flame(bpy, flame_template)
    # Move, turn and scale the prior in the world: the avatar must follow it exactly.
    head.location = (0.4, -1.0, 0.2)
    head.rotation_euler[2] = 0.5
    head.scale = (2.0, 2.0, 2.0)
    with FakeEngine(steps=4) as engine:
        use_engine(engine.url)
        avatar = generate(bpy, scene, head)
        submitted = next(iter(engine.jobs.values()))["body"]
    st = scene.headsculpt
    assert st.job_state == "done" and st.last_error == ""
    assert submitted["prompt"] == "a head of an old bearded man" and submitted["preset"] == "tiny"
    # The fake returns the uploaded prior as the avatar: placed back, it coincides with the prior.
    assert nearest_distance(world_vertices(avatar), world_vertices(head)).max() < 1e-5
    assert nearest_distance(world_vertices(head), world_vertices(avatar)).max() < 1e-5
    assert np.allclose(np.array(avatar.matrix_world), np.array(head.matrix_world), atol=1e-6)
    assert avatar.users_collection[0].name == "HeadSculpt"
    assert avatar.data.uv_layers, "the avatar has UVs"
    images = [node.image for slot in avatar.material_slots for node in slot.material.node_tree.nodes
              if node.type == "TEX_IMAGE" and node.image is not None]
    assert images and tuple(images[0].size) == (64, 64)
    assert avatar[PROP_JOB] == st.job_id and avatar[PROP_PROMPT] == submitted["prompt"]
    assert avatar[PROP_SEED] == 7 and avatar[PROP_PRIOR] == head.name
    assert st.preview_image is not None


def test_edit_avatar_creates_a_linked_copy_beside_it(bpy, scene, flame_template):
    from headsculpt_blender.properties import PROP_INSTRUCTION, PROP_JOB, PROP_KIND, PROP_PARENT

    head = import_flame(bpy, flame_template)
    with FakeEngine(edit_scale=1.1) as engine:
        use_engine(engine.url)
        avatar = generate(bpy, scene, head)
        st = scene.headsculpt
        bpy.context.view_layer.objects.active = avatar
        st.edit_instruction = "make him older"
        assert bpy.ops.headsculpt.edit() == {"FINISHED"}
        poll_until(scene, lambda: st.result_object is not None and st.result_object != avatar)
        edited = st.result_object
        body = engine.jobs[edited[PROP_JOB]]["body"]
    assert body == {"kind": "edit", "parent_job_id": avatar[PROP_JOB], "instruction": "make him older",
                    "edit_scale": pytest.approx(0.6), "preset": "tiny", "seed": 7, "parent_styles": True}
    assert edited[PROP_PARENT] == avatar[PROP_JOB] and edited[PROP_KIND] == "edit"
    assert edited[PROP_INSTRUCTION] == "make him older"
    assert edited.name != avatar.name and "HeadSculpt" in [c.name for c in edited.users_collection]
    # Beside the original: shifted along world X, otherwise the edit's own geometry (scaled by the fake).
    shift = edited.matrix_world.translation - avatar.matrix_world.translation
    assert shift.x > avatar.dimensions.x and abs(shift.y) < 1e-6 and abs(shift.z) < 1e-6
    assert edited.dimensions.z == pytest.approx(avatar.dimensions.z * 1.1, rel=1e-3)


def test_refusals_are_plain_and_nothing_crashes(bpy, scene, flame_template):
    st = scene.headsculpt
    head = import_flame(bpy, flame_template)
    # Not a mesh: the picker does not offer it, but a script can set it; Generate explains.
    from headsculpt_blender.prior import object_badge

    empty = bpy.data.objects.new("Empty", None)
    scene.collection.objects.link(empty)
    st.prior, st.prompt = empty, "a knight"
    refused(bpy.ops.headsculpt.generate)
    assert st.last_error == "This empty is not a mesh, so it cannot be a head prior: pick a mesh"
    refused(bpy.ops.headsculpt.preview_landmarks)
    st.prior = None
    refused(bpy.ops.headsculpt.generate)
    assert "Pick a head mesh" in st.last_error

    # Empty prompt.
    st.prior, st.prompt = head, "   "
    refused(bpy.ops.headsculpt.generate)
    assert st.last_error == "Type a prompt first."

    # Unreachable engine: a port nobody listens on.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    use_engine(f"http://127.0.0.1:{port}")
    st.prompt = "a knight"
    assert bpy.ops.headsculpt.generate() == {"FINISHED"}
    poll_until(scene, lambda: st.job_state == "")
    assert "cannot be reached" in st.last_error and st.result_object is None

    # An engine of another API version.
    with FakeEngine(api_version=2) as engine:
        use_engine(engine.url)
        assert bpy.ops.headsculpt.generate() == {"FINISHED"}
        poll_until(scene, lambda: st.job_state == "")
        assert "speaks API version 2 but this add-on needs version 1" in st.last_error
        assert [path for _, path in engine.requests] == ["/v1/health"]

    # Wrong token, and a mesh the engine finds no face on.
    with FakeEngine(landmarks_found=False) as engine:
        use_engine(engine.url, token="wrong")
        assert bpy.ops.headsculpt.generate() == {"FINISHED"}
        poll_until(scene, lambda: st.job_state == "")
        assert "refused the access token" in st.last_error
        bpy.ops.mesh.primitive_uv_sphere_add()
        st.prior = bpy.context.active_object
        use_engine(engine.url)
        assert bpy.ops.headsculpt.generate() == {"FINISHED"}
        poll_until(scene, lambda: st.job_state == "")
        assert st.last_error == "Sphere cannot serve as a head prior: MediaPipe found no face in the renders."
        assert engine.jobs == {}
        assert object_badge(st.prior, json.loads(st.prior_info_json)).usable is False


def test_unreachable_engine_keeps_the_job_recoverable(bpy, scene, flame_template):
    head = import_flame(bpy, flame_template)
    st = scene.headsculpt
    with FakeEngine(steps=50) as engine:
        submit_job(bpy, scene, engine, head)
        job_id = st.job_id
        jobs = engine.jobs
    # The engine is gone: the error says so, the job id stays, polling goes on.
    poll_until(scene, lambda: "cannot be reached" in st.last_error)
    assert st.job_id == job_id and st.job_state == "running"
    from headsculpt_blender import jobs as addon_jobs
    assert addon_jobs.job_active(scene)
    # A new engine process with the same jobs (as the real one keeps them on disk): polling resumes.
    with FakeEngine(steps=50) as engine:
        engine.jobs = jobs
        for job in jobs.values():
            job["iteration"] = job["total"] - 1
        use_engine(engine.url)
        addon_jobs._failed_at.clear()  # skip the back-off wait
        poll_until(scene, lambda: st.result_object is not None)
    assert st.job_state == "done" and st.last_error == ""


def test_cancel(bpy, scene, flame_template):
    head = import_flame(bpy, flame_template)
    st = scene.headsculpt
    with FakeEngine(steps=100) as engine:
        submit_job(bpy, scene, engine, head)
        refused(bpy.ops.headsculpt.generate)
        assert "already under way" in st.last_error
        assert bpy.ops.headsculpt.cancel() == {"FINISHED"}  # even while a refresh is under way
        poll_until(scene, lambda: st.job_state == "cancelled")
        assert engine.jobs[st.job_id]["state"] == "cancelled"


def test_add_base_head_stands_up_as_the_prior(bpy, scene):
    from headsculpt_blender.operators import BASE_HEAD_NAME, base_head_path
    from headsculpt_blender.prior import object_badge

    assert base_head_path() is not None, "flame_assets/base_head.obj is part of the repository"
    scene.cursor.location = (1.0, 2.0, 0.0)
    assert bpy.ops.headsculpt.add_base_head() == {"FINISHED"}
    head = scene.headsculpt.prior
    assert head.name == BASE_HEAD_NAME and object_badge(head, None).usable
    assert tuple(head.location) == pytest.approx((1.0, 2.0, 0.0))
    # The file is Y up (engine canonical); in Blender the head stands along Z and faces -Y, and the
    # add-on hands the engine the file's own coordinates back.
    from headsculpt_blender.prior import mesh_arrays

    sent, _ = mesh_arrays(head, bpy.context.evaluated_depsgraph_get())
    assert np.abs(sent - obj_vertices(base_head_path())).max() < 1e-5
    world = world_vertices(head)
    extent = np.ptp(world, axis=0)
    assert extent[2] > extent[1]  # taller (Z) than deep (Y)


def test_job_resumes_after_reopening_the_file(bpy, scene, flame_template, tmp_path):
    from headsculpt_blender import jobs

    head = import_flame(bpy, flame_template)
    st = scene.headsculpt
    with FakeEngine(steps=6) as engine:
        submit_job(bpy, scene, engine, head)
        job_id = st.job_id
        jobs.shutdown()  # as if Blender had closed: the work in memory is gone, the file keeps the job
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
        bpy.ops.wm.read_homefile(use_empty=True)
        assert bpy.context.scene.headsculpt.job_id == ""
        bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "scene.blend"))
        scene = bpy.context.scene
        st = scene.headsculpt
        assert st.job_id == job_id and bpy.app.timers.is_registered(jobs._timers[scene.name])
        poll_until(scene, lambda: st.result_object is not None)
    assert st.result_object["headsculpt_job_id"] == job_id


def test_interrupted_submission_is_cleared_on_load(bpy, scene, tmp_path):
    scene.headsculpt.job_state = "submitting"
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "scene.blend"))
    st = bpy.context.scene.headsculpt
    assert st.job_state == "" and "interrupted" in st.status


def test_flame_landmark_indices_from_the_preferences(bpy, scene, flame_template, tmp_path):
    from headsculpt_blender import jobs, preferences

    head = import_flame(bpy, flame_template)
    st = scene.headsculpt
    st.prior = head
    indices = np.arange(478) * 10
    np.save(tmp_path / "flame_mediapipe.npy", indices)
    prefs = preferences.preferences()
    try:
        with FakeEngine() as engine:
            use_engine(engine.url)
            prefs.flame_landmark_file = str(tmp_path / "flame_mediapipe.npy")
            bpy.ops.headsculpt.preview_landmarks()
            poll_until(scene, lambda: st.landmark_image is not None)
            assert engine.landmark_uploads == [indices.tolist()]
            # A file that is not 478 vertex indices is refused before anything is sent.
            np.save(tmp_path / "short.npy", indices[:477])
            prefs.flame_landmark_file = str(tmp_path / "short.npy")
            message = refused(bpy.ops.headsculpt.preview_landmarks)
            assert "must hold 478 integers" in message and len(engine.landmark_uploads) == 1
            # Not FLAME: the indices do not apply and are not sent.
            prefs.flame_landmark_file = str(tmp_path / "flame_mediapipe.npy")
            bpy.ops.mesh.primitive_uv_sphere_add()
            st.prior = bpy.context.active_object
            bpy.ops.headsculpt.preview_landmarks()
            poll_until(scene, lambda: len(engine.landmark_uploads) == 2 and not jobs.busy(scene))
            assert engine.landmark_uploads[1] is None
    finally:
        prefs.flame_landmark_file = ""


def test_failed_job_reports_the_engines_reason_and_stops_polling(bpy, scene, flame_template):
    from headsculpt_blender import jobs

    head = import_flame(bpy, flame_template)
    st = scene.headsculpt
    with FakeEngine(steps=5, fail_at=2) as engine:
        submit_job(bpy, scene, engine, head, until="failed")
        assert st.last_error == "The job failed: CUDA ran out of memory; try the draft preset."
        poll_until(scene, lambda: not jobs.busy(scene))
        assert jobs.poll_step(scene) is False and st.result_object is None


def test_prior_deleted_during_the_job_is_reported(bpy, scene, flame_template):
    from headsculpt_blender import jobs

    head = import_flame(bpy, flame_template)
    st = scene.headsculpt
    with FakeEngine(steps=4) as engine:
        submit_job(bpy, scene, engine, head)
        bpy.data.objects.remove(head)
        poll_until(scene, lambda: st.job_state == "not imported")
        assert "the prior object is gone from the scene" in st.last_error
        assert jobs.poll_step(scene) is False  # polling stops; the download stays in the user folder
        assert [o for o in bpy.data.objects if o.get("headsculpt_job_id")] == []


def test_prompt_and_instruction_limits(bpy, scene, flame_template):
    st = scene.headsculpt
    st.prior = import_flame(bpy, flame_template)
    st.prompt = "x" * 495  # 505 characters with the "a head of" prefix
    assert "The prompt is 505 characters long; the engine takes at most 500." in refused(bpy.ops.headsculpt.generate)
    avatar = bpy.data.objects.new("avatar", st.prior.data.copy())
    avatar["headsculpt_job_id"] = "job1"
    scene.collection.objects.link(avatar)
    bpy.context.view_layer.objects.active = avatar
    st.edit_instruction = ""
    assert "Type an instruction first." in refused(bpy.ops.headsculpt.edit)
