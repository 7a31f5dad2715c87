"""Guided landmarks (issue 14, item 3): six keypoints carry the built-in head's 478-point layout onto any
head, and bad keypoint files are refused with a sentence before anything is written (acceptance 4)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import trimesh

from headsculpt_engine.cli import main
from headsculpt_engine.errors import InputError
from headsculpt_engine.mesh.closest import closest_on_surface
from headsculpt_engine.prior import MeshArrays, load_prior
from headsculpt_engine.prior.assets import builtin_mesh_path
from headsculpt_engine.prior.keypoints import (KEYPOINTS, parse_keypoints, read_keypoint_file, template_landmarks,
                                               write_keypoint_file)

from artist_meshes import suzanne_obj

SUZANNE_KEYPOINTS = {  # marked on the Suzanne of `suzanne_obj` (size 0.25, face along +Z)
    "right_eye_outer": (-0.085, 0.03), "left_eye_outer": (0.085, 0.03), "nose_tip": (0.0, -0.03),
    "mouth_right": (-0.045, -0.065), "mouth_left": (0.045, -0.065), "chin": (0.0, -0.112)}


def front_point(vertices: np.ndarray, x: float, y: float) -> list[float]:
    """The front-most vertex near (x, y): where a click from the front lands."""
    near = np.hypot(vertices[:, 0] - x, vertices[:, 1] - y) < 0.01
    return vertices[np.flatnonzero(near)[np.argmax(vertices[near, 2])]].tolist()


@pytest.fixture(scope="module")
def suzanne(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suzanne")
    mesh = suzanne_obj(folder / "suzanne.obj")
    vertices = np.asarray(trimesh.load(str(mesh), process=False, force="mesh").vertices)
    points = {name: front_point(vertices, x, y) for name, (x, y) in SUZANNE_KEYPOINTS.items()}
    write_keypoint_file(folder / "keypoints.json", points)
    return mesh, folder / "keypoints.json", points


def builtin_arrays() -> MeshArrays:
    mesh = trimesh.load(str(builtin_mesh_path()), process=False, force="mesh")
    return MeshArrays(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces))


def test_an_affinely_changed_builtin_head_gets_the_builtin_layout_back():
    # Centimetres, rotated 25 degrees, 30% wider, moved: a thin-plate spline with its linear part
    # reproduces an affine change exactly, so the layout must land where the template's does.
    angle = math.radians(25)
    rotation = np.array([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    change = rotation @ np.diag([130.0, 100.0, 100.0])
    shift = np.array([3.0, -40.0, 7.0])
    base = builtin_arrays()
    moved = MeshArrays(base.vertices @ change.T + shift, base.faces)
    expected = template_landmarks() @ change.T + shift
    keypoints = {name: expected[index] for name, index in KEYPOINTS.items()}
    prior = load_prior(moved, keypoints=keypoints, detect_landmarks=False, sdf_resolution=16)
    got = prior.transform.to_canonical(prior.landmark_points())
    assert prior.landmarks is not None and prior.landmarks.found.all()
    error = np.linalg.norm(got - expected, axis=1)
    head_size = float(np.ptp(moved.vertices, axis=0).max())
    assert np.median(error) < 1e-4 * head_size and error.max() < 1e-3 * head_size, (np.median(error), error.max())


@pytest.mark.parametrize("turn", [np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]),  # facing +X
                                  np.array([[-1.0, 0, 0], [0, -1, 0], [0, 0, 1]])],  # upside down
                         ids=["facing +X", "upside down"])
def test_a_head_marked_lying_sideways_is_turned_upright_and_its_results_stay_in_its_frame(turn):
    """The keypoints say which way the head faces: the prior is turned so its face looks along +Z with +Y
    up (the training cameras' pose), and everything still maps back to the file's own frame."""
    base = builtin_arrays()
    turned = MeshArrays(base.vertices @ turn.T, base.faces)
    expected = template_landmarks() @ turn.T
    keypoints = {name: expected[index] for name, index in KEYPOINTS.items()}
    prior = load_prior(turned, keypoints=keypoints, detect_landmarks=False, sdf_resolution=16)
    np.testing.assert_allclose(prior.transform.rotation @ turn, np.eye(3), atol=1e-12)
    upright = load_prior(base, keypoints={name: template_landmarks()[index] for name, index in KEYPOINTS.items()},
                         detect_landmarks=False, sdf_resolution=16)
    assert np.allclose(upright.transform.rotation, np.eye(3))
    np.testing.assert_allclose(prior.vertices, upright.vertices, atol=1e-5)  # the same upright head
    np.testing.assert_allclose(prior.transform.to_canonical(prior.landmark_points()), expected, atol=1e-4)


def test_suzanne_gets_478_landmarks_on_its_surface_through_the_marked_points(suzanne):
    mesh, keypoint_file, points = suzanne
    prior = load_prior(mesh, keypoints=read_keypoint_file(keypoint_file), detect_landmarks=False, sdf_resolution=16)
    marks = prior.transform.to_canonical(prior.landmark_points())
    assert np.isfinite(marks).all()
    canonical = prior.canonical_vertices()
    _, _, distance = closest_on_surface(marks, canonical, prior.faces)
    assert distance.max() < 1e-6  # every landmark lies on the mesh
    for name, index in KEYPOINTS.items():  # the keypoints' own landmarks sit where they were marked
        assert np.linalg.norm(marks[index] - points[name]) < 1e-3, name
    # The layout keeps the face's order: eyes above the nose above the mouth above the chin, left on +X.
    assert marks[33, 0] < marks[1, 0] < marks[263, 0]
    assert marks[159, 1] > marks[1, 1] > marks[13, 1] > marks[152, 1]  # upper eyelid, nose, lip, chin


def test_landmarks_command_draws_the_guided_layout_as_a_contact_sheet(suzanne, tmp_path, capsys):
    mesh, keypoint_file, points = suzanne
    out = tmp_path / "marks"
    assert main(["landmarks", "--prior", str(mesh), "--keypoints", str(keypoint_file), "--out", str(out),
                 "--size", "128"]) == 0
    from PIL import Image

    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    front = sheet[24:, : sheet.shape[1] // 4]
    for colour in ((10, 200, 10), (180, 200, 10), (10, 200, 180), (10, 180, 10)):  # oval, both eyes, lips
        assert (front == colour).all(axis=-1).any(), colour
    described = json.loads((out / "landmarks.json").read_text())
    assert np.allclose(described["points"][KEYPOINTS["nose_tip"]], points["nose_tip"], atol=1e-3)


def good_points(points: dict) -> dict:
    return {name: list(value) for name, value in points.items()}


def bad_files():
    """(label, change to the good keypoint mapping or raw text, words the sentence must hold)."""
    def drop(p):
        p.pop("chin")
        return p

    def extra(p):
        p["ear_left"] = p["nose_tip"]
        return p

    def nan(p):
        p["nose_tip"] = [float("nan"), 0.0, 0.0]
        return p

    def far(p):
        p["chin"] = [p["chin"][0], p["chin"][1] - 0.2, p["chin"][2] + 0.3]
        return p

    def same(p):
        p["mouth_left"] = list(p["mouth_right"])
        return p

    def short(p):
        p["nose_tip"] = p["nose_tip"][:2]
        return p

    return [("missing name", drop, "missing chin"), ("wrong count", extra, "unknown ear_left"),
            ("NaN", nan, "not a finite number"), ("far off the mesh", far, "away from the mesh surface"),
            ("coincident", same, "same spot"), ("two coordinates", short, "three numbers"),
            ("not JSON", "{keypoints: nope", "not readable JSON"), ("no keypoints entry", '{"points": {}}',
                                                                    "\"keypoints\" entry")]


@pytest.mark.parametrize("label,change,words", bad_files(), ids=[case[0] for case in bad_files()])
def test_bad_keypoint_files_get_a_sentence_and_nothing_is_written(suzanne, tmp_path, capsys, label, change, words):
    mesh, _, points = suzanne
    bad = tmp_path / "bad.json"
    bad.write_text(change if isinstance(change, str) else json.dumps({"keypoints": change(good_points(points))}))
    for command in (["landmarks", "--prior", str(mesh), "--keypoints", str(bad), "--out", str(tmp_path / "out")],
                    ["generate", "--prompt", "a monkey", "--prior", str(mesh), "--keypoints", str(bad),
                     "--models", "tiny", "--preset", "tiny", "--out", str(tmp_path / "out")]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert words in error and "Traceback" not in error, error
        assert error.count("\n") == 1  # one sentence, no library noise
        assert not (tmp_path / "out").exists()


def test_keypoint_options_that_contradict_each_other_are_refused(suzanne, tmp_path, capsys):
    mesh, keypoint_file, _ = suzanne
    assert main(["generate", "--prompt", "a monkey", "--prior", str(mesh), "--keypoints", str(keypoint_file),
                 "--landmarks", "none", "--out", str(tmp_path / "out")]) == 2
    assert "drop --keypoints" in capsys.readouterr().err
    assert main(["landmarks", "--prior", "builtin", "--keypoints", str(keypoint_file),
                 "--out", str(tmp_path / "out")]) == 2
    assert "built-in head has its own landmarks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_parse_keypoints_refuses_booleans_and_non_mappings():
    with pytest.raises(InputError, match="map keypoint names"):
        parse_keypoints([1, 2, 3])
    points = {name: [0.0, 0.0, float(i)] for i, name in enumerate(KEYPOINTS)}
    points["chin"] = [True, 0.0, 0.0]
    with pytest.raises(InputError, match="three numbers"):
        parse_keypoints(points)


def test_edit_with_bad_keypoints_is_refused_before_anything_is_written(suzanne, tmp_path, capsys):
    from headsculpt_engine.config import preset_config

    mesh, keypoint_file, points = suzanne
    parent = tmp_path / "parent"
    load_prior(mesh, detect_landmarks=False, sdf_resolution=16).save(parent / "prior")
    (parent / "fine").mkdir()
    (parent / "fine" / "checkpoint.pt").write_bytes(b"")  # never read: the keypoints are refused first
    cfg = preset_config("tiny")
    cfg.prompt, cfg.guidance.landmarks = "a monkey", "none"
    (parent / "run.json").write_text(json.dumps({"status": "done", "config": cfg.to_dict(), "preset": "tiny"}))
    far = good_points(points)
    far["chin"] = [c + 0.5 for c in far["chin"]]
    bad = tmp_path / "far.json"
    bad.write_text(json.dumps({"keypoints": far}))
    out = tmp_path / "edit"
    assert main(["edit", "--from", str(parent), "--instruction", "make it golden", "--keypoints", str(bad),
                 "--models", "tiny", "--out", str(out)]) == 2
    assert "away from the mesh surface" in capsys.readouterr().err
    assert not out.exists()
