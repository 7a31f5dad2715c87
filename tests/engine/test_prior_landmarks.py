"""Landmarks on head priors: detection with MediaPipe on rasterised renders, landmark maps with
visibility and back-view policies, the built-in head, and the `landmarks` command."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from headsculpt_engine.errors import InputError
from headsculpt_engine.prior import MeshArrays, builtin_prior, load_prior
from headsculpt_engine.prior.landmark_map import GROUP_COLOURS, IRIS_COLOURS
from headsculpt_engine.prior.preview import contact_sheet, landmark_view_cameras

SPEC_COLOURS = {(0, 0, 0)} | set(GROUP_COLOURS.values()) | set(IRIS_COLOURS.values())


@pytest.fixture(scope="module")
def flame_prior(flame_template):
    # Detection and the SDF grid are cached per prior hash in the session's cache folder.
    return load_prior(flame_template)


@pytest.fixture(scope="module")
def base_prior():
    return builtin_prior()


def to_uint8(maps: torch.Tensor) -> np.ndarray:
    return (maps.permute(0, 2, 3, 1) * 255).round().byte().numpy()


def pixels_of(image: np.ndarray, colour) -> np.ndarray:
    """(K, 2) x, y of the pixels with exactly `colour`."""
    ys, xs = np.nonzero((image == np.asarray(colour, dtype=np.uint8)).all(axis=-1))
    return np.stack([xs, ys], axis=1)


def test_flame_landmarks_are_found_and_anatomically_placed(flame_prior):
    marks = flame_prior.landmarks
    assert marks is not None and marks.found.all()
    assert marks.confidence.mean() > 0.6
    points = flame_prior.transform.to_canonical(flame_prior.landmark_points())  # metres, file frame
    v = flame_prior.canonical_vertices()
    centre_line = v[np.abs(v[:, 0]) < 0.01]
    nose = centre_line[np.argmax(centre_line[:, 2])]
    assert np.linalg.norm(points[1] - nose) < 0.010
    mirrored_263 = points[263] * np.array([-1.0, 1.0, 1.0])
    assert np.linalg.norm(points[33] - mirrored_263) < 0.005
    # Anatomy: eyes above the nose tip, lips (13 upper, 14 lower) below it; 33 on the head's right (-X).
    assert points[33][1] > points[1][1] > points[13][1] > points[14][1]
    assert points[33][0] < 0 < points[263][0]


def test_front_map_groups_lie_in_their_regions_with_spec_colours(flame_prior):
    cameras = landmark_view_cameras(512)
    image = to_uint8(flame_prior.landmark_maps(cameras[0]))[0]
    assert {tuple(c) for c in image.reshape(-1, 3)} <= SPEC_COLOURS
    centre = {name: pixels_of(image, colour).mean(axis=0) for name, colour in GROUP_COLOURS.items()}
    for name, colour in GROUP_COLOURS.items():
        assert len(pixels_of(image, colour)) > 50, name
    for index, colour in IRIS_COLOURS.items():
        assert len(pixels_of(image, colour)) >= 4, index
    oval = pixels_of(image, GROUP_COLOURS["face_oval"])
    # The face oval surrounds everything else and is centred horizontally.
    assert abs(centre["face_oval"][0] - 256) < 20
    for name in ("left_eye", "right_eye", "lips", "left_eyebrow", "right_eyebrow"):
        assert oval[:, 0].min() < centre[name][0] < oval[:, 0].max()
        assert oval[:, 1].min() < centre[name][1] < oval[:, 1].max()
    # MediaPipe's RIGHT_* sets are the subject's right: the image's left in a front view.
    assert centre["right_eye"][0] < 256 < centre["left_eye"][0]
    assert centre["right_eyebrow"][0] < 256 < centre["left_eyebrow"][0]
    # Brows above eyes (y grows downwards), eyes above the lips, lips centred.
    assert centre["right_eyebrow"][1] < centre["right_eye"][1] < centre["lips"][1]
    assert centre["left_eyebrow"][1] < centre["left_eye"][1] < centre["lips"][1]
    assert abs(centre["lips"][0] - 256) < 15
    # Iris squares sit inside their eyes (468 belongs to mediapipe's RIGHT_IRIS set, 473 to LEFT_IRIS).
    assert np.linalg.norm(pixels_of(image, IRIS_COLOURS[468]).mean(0) - centre["right_eye"]) < 15
    assert np.linalg.norm(pixels_of(image, IRIS_COLOURS[473]).mean(0) - centre["left_eye"]) < 15


def test_hidden_landmarks_are_culled_and_back_views_follow_the_policy(flame_prior):
    cameras = landmark_view_cameras(256)  # front, left (+X), back, right
    assert cameras.view_names() == ["front", "side", "back", "side"]
    oval_maps = to_uint8(flame_prior.landmark_maps(cameras, "oval"))
    none_maps = to_uint8(flame_prior.landmark_maps(cameras, "none"))
    # From the head's left side the right eye is behind the face: not drawn; the left eye is.
    left_view = none_maps[1]
    assert len(pixels_of(left_view, GROUP_COLOURS["left_eye"])) > 0
    assert len(pixels_of(left_view, GROUP_COLOURS["right_eye"])) == 0
    right_view = none_maps[3]
    assert len(pixels_of(right_view, GROUP_COLOURS["right_eye"])) > 0
    assert len(pixels_of(right_view, GROUP_COLOURS["left_eye"])) == 0
    # Back view: "none" draws nothing; "oval" draws the oval and nothing else.
    assert not none_maps[2].any()
    back_colours = {tuple(c) for c in oval_maps[2].reshape(-1, 3)}
    assert back_colours == {(0, 0, 0), GROUP_COLOURS["face_oval"]}
    # Front and side views do not depend on the back-view policy.
    np.testing.assert_array_equal(oval_maps[[0, 1, 3]], none_maps[[0, 1, 3]])
    with pytest.raises(InputError, match="back-view policy"):
        flame_prior.landmark_maps(cameras, "everything")


def test_maps_follow_the_camera_size(flame_prior):
    cameras = landmark_view_cameras(512)[0].with_size(96, 64)
    maps = flame_prior.landmark_maps(cameras)
    assert maps.shape == (1, 3, 64, 96) and maps.dtype == torch.float32
    assert 0.0 <= maps.min() and maps.max() <= 1.0 and maps.max() > 0


def test_mesh_without_a_face_fails_with_the_landmark_file_alternative():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    with pytest.raises(InputError, match="found no face.*landmark file"):
        load_prior(MeshArrays(sphere.vertices, sphere.faces), sdf_resolution=16)


def test_builtin_prior_has_landmarks_and_a_full_front_map(base_prior):
    assert base_prior.landmarks is not None
    assert base_prior.landmarks.found.sum() == 478
    assert base_prior.landmarks.confidence.mean() > 0.5
    assert 2000 < len(base_prior.vertices) < 10000
    image = to_uint8(base_prior.landmark_maps(landmark_view_cameras(512)[0]))[0]
    assert {tuple(c) for c in image.reshape(-1, 3)} <= SPEC_COLOURS
    for name, colour in GROUP_COLOURS.items():
        assert len(pixels_of(image, colour)) > 30, name
    for index, colour in IRIS_COLOURS.items():
        assert len(pixels_of(image, colour)) >= 4, index
    # Stored landmarks agree with a fresh detection on the committed mesh (same method as any head).
    from headsculpt_engine.prior.builtin import builtin_mesh_path

    fresh = load_prior(builtin_mesh_path())
    distance = np.linalg.norm(fresh.landmark_points() - base_prior.landmark_points(), axis=1)
    assert np.median(distance) < 0.01


def test_contact_sheet_shows_maps_over_the_shaded_prior(base_prior):
    sheet = contact_sheet(base_prior, size=128)
    assert sheet.shape == (128 + 24, 4 * 128, 3) and sheet.dtype == np.uint8
    front = sheet[24:, :128]
    assert len(pixels_of(front, GROUP_COLOURS["lips"])) > 0
    shaded = ~(front == front[..., :1]).all(-1)  # coloured map pixels; the render itself is grey
    assert 0 < shaded.mean() < 0.2


def test_landmarks_command_writes_maps_sheet_and_json(tmp_path, base_prior):
    out = tmp_path / "marks"
    result = subprocess.run([sys.executable, "-m", "headsculpt_engine", "landmarks", "--prior", "builtin",
                             "--out", str(out), "--size", "256"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "478 of 478 landmarks found" in result.stdout
    from PIL import Image

    for name in ("front", "left", "back", "right"):
        image = np.asarray(Image.open(out / f"landmarks_{name}.png"))
        assert image.shape == (256, 256, 3)
    assert np.asarray(Image.open(out / "contact_sheet.png")).shape[1] == 4 * 256
    data = json.loads((out / "landmarks.json").read_text())
    assert len(data["points"]) == 478 and len(data["confidence"]) == 478
    expected = base_prior.transform.to_canonical(base_prior.landmark_points())
    np.testing.assert_allclose(np.array(data["points"]), expected, atol=1e-6)


def test_detection_keeps_mediapipes_native_log_lines_off_the_console(tmp_path, flame_template):
    """MediaPipe's C++ core writes TensorFlow Lite and absl lines straight to stderr; a run shows none."""
    env = dict(os.environ, HEADSCULPT_CACHE_DIR=str(tmp_path / "cache"))  # no cached landmarks: MediaPipe runs
    result = subprocess.run([sys.executable, "-m", "headsculpt_engine", "landmarks", "--prior", str(flame_template),
                             "--out", str(tmp_path / "marks"), "--size", "128"], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "running MediaPipe FaceMesh" in result.stdout and "landmarks found" in result.stdout
    assert result.stderr == ""
    assert "TensorFlow" not in result.stdout and "W0000" not in result.stdout


def test_landmarks_command_reports_a_missing_face(tmp_path, capsys):
    from headsculpt_engine.cli import main

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    path = tmp_path / "ball.obj"
    sphere.export(path)
    assert main(["landmarks", "--prior", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "found no face" in err and "--landmark-file" in err
    # With a landmark file the same mesh works.
    indices = np.arange(478) % len(sphere.vertices)
    indices[7] = -1  # a landmark the file leaves out
    np.save(tmp_path / "marks.npy", indices)
    assert main(["landmarks", "--prior", str(path), "--landmark-file", str(tmp_path / "marks.npy"),
                 "--size", "128", "--out", str(tmp_path / "o")]) == 0
    data = json.loads((tmp_path / "o" / "landmarks.json").read_text())
    np.testing.assert_allclose(data["points"][5], sphere.vertices[5], atol=1e-6)
    assert data["points"][7] is None and data["confidence"][7] == 0.0
    assert data["confidence"][:7] == [1.0] * 7


def test_builtin_mesh_comes_from_its_generator_in_the_canonical_frame(base_prior):
    import importlib.util

    from headsculpt_engine.prior.builtin import ASSETS_DIR

    spec = importlib.util.spec_from_file_location("make_base_head", ASSETS_DIR / "make_base_head.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    vertices = base_prior.canonical_vertices()
    # The committed vertices lie on the generator's implicit surface (within decimation error).
    assert np.abs(generator.head_sdf(vertices)).max() < 0.003
    # Metres, +Y up, face along +Z: a head ~0.15-0.2 m wide, nose tip forward, eyes above mouth.
    assert 0.14 < np.ptp(vertices[:, 0]) < 0.25
    points = base_prior.transform.to_canonical(base_prior.landmark_points())
    assert points[1][2] > np.percentile(vertices[:, 2], 99)
    assert points[33][1] > points[1][1] > points[13][1]
    assert points[33][0] < 0 < points[263][0]


def test_prior_benchmark_times_detection_and_a_map(capsys):
    """`python -m headsculpt_engine.prior.benchmark` (docs/benchmarks.md, "Head prior") on the built-in head."""
    import re

    from headsculpt_engine.prior.benchmark import main

    assert main(["--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^mesh: \d+ vertices, \d+ faces; torch threads \d+$", printed, re.M), printed
    detection = re.search(r"^landmark detection: wall ([\d.]+) s, cpu ([\d.]+) s$", printed, re.M)
    drawing = re.search(r"^landmark map 512x512 over 2: wall median ([\d.]+) ms \(min ([\d.]+)\), cpu median ([\d.]+) ms$",
                        printed, re.M)
    assert detection and float(detection[1]) > 0
    assert drawing and 0 < float(drawing[2]) <= float(drawing[1])
