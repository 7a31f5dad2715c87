"""`headsculpt dataset` with the tiny models: the EG3D layout, cameras that re-project the prior's landmarks
onto the landmark maps drawn for them (undoing EG3D's conventions here, by hand), resume, the sentences for
bad input, and `--from-runs` on a finished tiny run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headsculpt_engine.cli import main
from headsculpt_engine.prior import builtin_prior
from headsculpt_engine.prior.landmark_map import GROUP_COLOURS, IRIS_COLOURS, landmark_groups

TINY = ["--preset", "tiny", "--models", "tiny", "--device", "cpu", "--steps", "2"]
# Narrowed from the papers' ranges so that the face is seen in every view (the maps then hold lines).
FACING = ["--set", "camera.azimuth=(-60,60)", "--set", "camera.polar=(70,100)"]
PROMPTS = ["a DSLR portrait of an old man", "a head of a young woman"]


def dataset(out: Path, *extra: str, prompts: Path | None = None) -> int:
    return main(["dataset", *(["--prompts", str(prompts)] if prompts else []), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# attribute prompts\n" + "\n".join(PROMPTS) + "\n\n")
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory, prompts_file) -> Path:
    out = tmp_path_factory.mktemp("dataset") / "ds"
    assert dataset(out, "--views", "4", *FACING, prompts=prompts_file) == 0
    return out


def read_labels(out: Path) -> dict[str, np.ndarray]:
    labels = json.loads((out / "images" / "dataset.json").read_text())["labels"]
    return {name: np.asarray(label, dtype=np.float64) for name, label in labels}


def project(label: np.ndarray, points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """EG3D's convention undone by hand: OpenCV cam2world, intrinsics times the image size."""
    cam2world = label[:16].reshape(4, 4)
    intrinsics = label[16:].reshape(3, 3) * np.array([[size], [size], [1.0]])
    world2cam = np.linalg.inv(cam2world)
    cam = points @ world2cam[:3, :3].T + world2cam[:3, 3]
    pixels = cam @ intrinsics.T
    return pixels[:, :2] / pixels[:, 2:], cam[:, 2]


def pixels_of(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """(K, 2) pixel centres (x, y) of the pixels with exactly this colour."""
    ys, xs = np.nonzero(np.all(image == np.array(colour, dtype=np.uint8), axis=-1))
    return np.stack([xs + 0.5, ys + 0.5], axis=1)


def segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K,) distance of each point to the nearest of the segments a[i]-b[i]."""
    ab = b - a
    t = np.clip(np.einsum("kse,se->ks", points[:, None] - a[None], ab) / np.maximum((ab ** 2).sum(-1), 1e-12), 0, 1)
    nearest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None] - nearest, axis=-1).min(axis=1)


def test_dataset_writes_n_images_whose_cameras_reproject_the_landmarks_onto_the_maps(made):
    labels = read_labels(made)
    names = [f"{i:05d}.png" for i in range(4)]
    assert list(labels) == names and all(label.shape == (25,) for label in labels.values())
    views = json.loads((made / "views.json").read_text())["images"]
    assert [v["prompt"] for v in views] == [PROMPTS[i % 2] for i in range(4)]  # round robin
    for view in views:
        assert view["view"] == ("front" if abs((view["azimuth"] + 180) % 360 - 180) < 35 else "side")
    assert sorted(p.name for p in (made / "images").iterdir()) == [*names, "dataset.json"]  # nothing else for EG3D
    assert Image.open(made / "contact_sheet.png").size[0] == 4 * 128

    points = builtin_prior().landmark_points()
    iris_checked = 0
    for name, label in labels.items():
        image = np.asarray(Image.open(made / "images" / name).convert("RGB"))
        condition = np.asarray(Image.open(made / "conditions" / name).convert("RGB"))
        size = condition.shape[0]
        assert image.shape == condition.shape == (size, size, 3) and image.std() > 0
        np.testing.assert_allclose(label[16:], [label[16], 0, 0.5, 0, label[16], 0.5, 0, 0, 1], atol=1e-6)
        xy, depth = project(label, points, size)
        assert (depth[np.isfinite(depth)] > 0).all()  # OpenCV: the head is in front, along +Z
        for index, colour in IRIS_COLOURS.items():
            square = pixels_of(condition, colour)
            if len(square) == 16:  # a whole 4x4 square: its centre is the projected iris within a pixel
                assert np.abs(square.mean(axis=0) - xy[index]).max() < 1.0
                iris_checked += 1
        lit = 0
        for group in landmark_groups():
            drawn = pixels_of(condition, GROUP_COLOURS[group.name])
            if len(drawn):
                # Lines 2 pixels thick between the projected landmarks (cv2 draws from the pixels holding them):
                # within half the thickness (1), the landmark's rounding to its pixel's centre (up to 0.71)
                # and the thick line's fill rounding (up to 0.71) of the true segment.
                assert segment_distance(drawn, xy[group.edges[:, 0]], xy[group.edges[:, 1]]).max() < 2.5
            lit += len(drawn)
        assert lit > 30
    assert iris_checked >= 2

    # The check can fail: read as an OpenGL camera (without EG3D's axis flip) the irises land elsewhere.
    name, label = next(iter(labels.items()))
    flipped = label.copy()
    flipped[:16] = (label[:16].reshape(4, 4) @ np.diag([1.0, -1.0, -1.0, 1.0])).ravel()
    condition = np.asarray(Image.open(made / "conditions" / name).convert("RGB"))
    xy, _ = project(flipped, points, condition.shape[0])
    square = pixels_of(condition, IRIS_COLOURS[468])
    assert len(square) and np.abs(square.mean(axis=0) - xy[468]).max() > 5.0


def test_a_rerun_resumes_and_extends_and_other_settings_are_refused(made, prompts_file, capsys):
    before = {p.name: p.read_bytes() for p in (made / "images").glob("*.png")}
    (made / "images" / "00002.png").unlink()
    capsys.readouterr()
    assert dataset(made, "--views", "5", *FACING, prompts=prompts_file) == 0
    out = capsys.readouterr().out
    assert out.count("already there, skipped") == 3 and "00002.png" in out and "00004.png" in out
    after = {p.name: p.read_bytes() for p in (made / "images").glob("*.png")}
    assert {name: after[name] for name in before} == before  # remade image 2 is the same image
    assert len(after) == 5 and len(read_labels(made)) == 5
    assert dataset(made, "--views", "5", "--seed", "3", *FACING, prompts=prompts_file) == 2
    assert "other settings" in capsys.readouterr().err
    assert len(list((made / "images").glob("*.png"))) == 5


@pytest.mark.parametrize("case", ["views 0", "missing prompts", "empty prompts"])
def test_bad_input_gets_a_sentence_and_nothing_is_written(case, tmp_path, prompts_file, capsys):
    out = tmp_path / "ds"
    prompts = {"views 0": prompts_file, "missing prompts": tmp_path / "nope.txt",
               "empty prompts": tmp_path / "empty.txt"}[case]
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    assert dataset(out, "--views", "0" if case == "views 0" else "2", prompts=prompts) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("headsculpt: error: ") and err.endswith(".") and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_models_that_fail_to_load_leave_no_dataset_behind(tmp_path, prompts_file, capsys):
    out = tmp_path / "ds"
    assert main(["dataset", "--prompts", str(prompts_file), "--views", "2", "--out", str(out), "--preset", "tiny",
                 "--device", "cpu", "--models", str(tmp_path)]) == 2
    assert "models folder" in capsys.readouterr().err
    missing = tmp_path / "missing-models"
    (missing / "face-controlnet").mkdir(parents=True)
    (missing / "model_index.json").write_text("{}")
    assert main(["dataset", "--prompts", str(prompts_file), "--views", "2", "--out", str(out), "--preset", "tiny",
                 "--device", "cpu", "--models", str(missing)]) == 2
    assert "tokenizer does not exist" in capsys.readouterr().err  # found when the first image needs the models
    assert not out.exists()


def test_from_runs_renders_a_finished_tiny_run_in_its_priors_frame(tmp_path):
    import torch

    from headsculpt_engine.cameras import orbit_cameras
    from headsculpt_engine.prior import HeadPrior
    from headsculpt_engine.prior.render import rasterize_prior

    run = tmp_path / "run"
    cheap = ["coarse.iterations=2", "fine.iterations=2", "coarse.mesh_resolution=32", "export.turntable_frames=1",
             "export.texture_size=128"]
    assert main(["generate", "--prompt", "a head of an old man", "--preset", "tiny", "--models", "tiny",
                 "--device", "cpu", *[a for item in cheap for a in ("--set", item)], "--out", str(run)]) == 0
    out = tmp_path / "ds"
    assert main(["dataset", "--from-runs", str(run), "--views", "2", "--out", str(out), "--preset", "tiny",
                 "--device", "cpu", *FACING]) == 0
    assert list(read_labels(out)) == ["00000.png", "00001.png"]
    views = json.loads((out / "views.json").read_text())["images"]
    assert [v["prompt"] for v in views] == ["a head of an old man"] * 2
    assert views[0]["source"]["run"] == str(run.resolve())
    prior = HeadPrior.load(run / "prior")
    for view in views:
        image = np.asarray(Image.open(out / view["file"]).convert("RGB"))
        size = image.shape[0]
        cameras = orbit_cameras([view["azimuth"]], view["polar"], view["radius"], view["fov_y"], size, size)
        prior_silhouette = torch.isfinite(rasterize_prior(prior.vertices, prior.faces, cameras).depth[0]).numpy()
        avatar = (image < 250).any(axis=-1)  # on the white background
        # A tiny run stays on its prior: the avatar is rendered in the frame of the prior and the cameras.
        assert (avatar & prior_silhouette).sum() / (avatar | prior_silhouette).sum() > 0.9


def test_the_sampler_uses_the_face_controlnet_on_front_views_and_the_plain_unet_on_back_views():
    """Swapping the face ControlNet for another changes a front view's image and leaves a back view's
    (given the same non-empty map) exactly as it was: back views are sampled without the ControlNet."""
    import dataclasses

    from headsculpt_engine.cameras import orbit_cameras
    from headsculpt_engine.config import preset_config
    from headsculpt_engine.dataset.sampling import LandmarkSampler, SamplingOptions
    from headsculpt_engine.models.loading import load_diffusion_models

    cfg = preset_config("tiny")
    models = load_diffusion_models(cfg.models, "cpu", with_ip2p=True)
    other = dataclasses.replace(models, face_controlnet=models.ip2p_controlnet)
    options = SamplingOptions(steps=2, resolution=64)
    front = orbit_cameras([0.0], 90.0, 1.25, 40.0, 64, 64)
    back = orbit_cameras([180.0], 90.0, 1.25, 40.0, 64, 64)
    maps = builtin_prior().landmark_maps(front)
    assert maps.amax() > 0 and back.view_names() == ["back"]

    def image(which, cameras):
        return LandmarkSampler(which, options).sample(PROMPTS[0], cameras, maps, seed=7)

    assert not np.array_equal(image(models, front), image(other, front))
    np.testing.assert_array_equal(image(models, back), image(other, back))


def test_lora_and_image_reach_the_sampler_and_the_dataset_settings(tmp_path, prompts_file, monkeypatch, capsys):
    import dataclasses

    from headsculpt_engine.cameras import orbit_cameras
    from headsculpt_engine.dataset.sampling import LandmarkSampler
    from headsculpt_engine.models.loading import tiny_models_dir
    from headsculpt_engine.models.tiny import TINY_LORA_DIR

    samplers = []
    sample = LandmarkSampler.sample
    monkeypatch.setattr(LandmarkSampler, "sample", lambda self, *a: samplers.append(self) or sample(self, *a))
    lora = str(tiny_models_dir() / TINY_LORA_DIR)
    image = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "ds"
    styles = ["--lora", lora, "--lora-scale", "0.5", "--image", str(image), "--image-scale", "0.4"]
    assert dataset(out, "--views", "1", *FACING, *styles, prompts=prompts_file) == 0

    sampler = samplers[0]
    assert [(loaded.source, loaded.scale) for loaded in sampler.models.loras] == [(lora, 0.5)]
    assert sampler.image is not None and sampler.image.scale == 0.4
    settings = json.loads((out / "views.json").read_text())["settings"]
    assert settings["loras"] == [{"source": lora, "scale": 0.5}]
    assert settings["image_prompt"]["file"] == str(image.resolve()) and settings["image_prompt"]["scale"] == 0.4
    # The image prompt steers the sampling: at scale 0 (the text-only prediction) the same view comes out otherwise.
    front = orbit_cameras([0.0], 90.0, 1.25, 40.0, 64, 64)
    maps = builtin_prior().landmark_maps(front)
    styled = sample(sampler, PROMPTS[0], front, maps, 7)
    sampler.image = dataclasses.replace(sampler.image, scale=0.0)
    assert not np.array_equal(styled, sample(sampler, PROMPTS[0], front, maps, 7))

    capsys.readouterr()
    assert main(["dataset", "--from-runs", str(tmp_path), "--views", "1", "--out", str(tmp_path / "runs-ds"),
                 *styles]) == 2
    assert "--from-runs renders finished avatars" in capsys.readouterr().err
