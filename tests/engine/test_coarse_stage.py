"""The coarse stage: its initial state is the prior, it converges under an oracle guidance, it resumes
bit-identically, it stops on request, and it writes what the later stages read."""
from __future__ import annotations

import torch
import pytest

from analytic_prior import SpherePrior
from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.config import RunConfig, preset_config
from headsculpt_engine.errors import Cancelled
from headsculpt_engine.guidance.oracle import oracle_guidance
from headsculpt_engine.stages.coarse import CoarseModel, CoarseStage, load_coarse, run_coarse
from headsculpt_engine.stages.loop import RunCallbacks, StageSchedule, load_checkpoint, run_stage

FRONT, BACK, BACKGROUND = torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0.1, 0.3, 0.9]), torch.tensor([1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def prior() -> SpherePrior:
    return SpherePrior(radius=0.6)


def painted_target(prior: SpherePrior):
    """Renders of the prior painted one colour in front (z > 0) and another behind, on white."""
    def target(cameras):
        hit, points = prior.ray_hits(cameras)
        colour = torch.where(points[..., 2:3] > 0, FRONT, BACK)
        return torch.where(hit[..., None], colour, BACKGROUND).permute(0, 3, 1, 2)
    return target


def small_config(iterations: int) -> RunConfig:
    """A small grid at 32x32 with albedo shading: enough to learn two colours on CPU in seconds."""
    cfg = preset_config("tiny")
    c = cfg.coarse
    c.iterations, c.resolution, c.samples_per_ray = iterations, 32, 32
    c.grid_levels, c.grid_log2_table_size, c.grid_finest_resolution = 8, 12, 128
    c.warmup_iterations, c.warmup_shading = iterations, "albedo"
    # The paper's 1e-3 needs about twice the iterations to get there; 1e-2 keeps the test short.
    c.lr = 1e-2
    return cfg


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10.0 * torch.log10(((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def flame_prior(flame_template):
    from headsculpt_engine.prior import load_prior

    return load_prior(flame_template, detect_landmarks=False)


def flame_painted_target(prior):
    """Rasterised renders of the FLAME prior, one colour in front (z > 0) and another behind, on white."""
    from headsculpt_engine.mesh.raster import make_rasterizer

    rasterizer = make_rasterizer("cpu", "torch")
    vertices, faces = torch.as_tensor(prior.vertices), torch.as_tensor(prior.faces).long()
    colours = torch.where(vertices[:, 2:3] > 0, FRONT, BACK)

    def target(cameras):
        raster = rasterizer.rasterize(vertices, faces, cameras.to("cpu"))
        image = torch.where(raster.mask[..., None], rasterizer.interpolate(colours, raster, faces), BACKGROUND)
        return image.permute(0, 3, 1, 2)
    return target


def test_initial_opacity_is_the_flame_silhouette_and_empty_space_is_skipped(flame_prior):
    from headsculpt_engine.mesh.raster import make_rasterizer

    cfg = preset_config("tiny")
    cfg.coarse.samples_per_ray = 64
    model = CoarseModel.create(cfg.coarse, flame_prior, "cpu")
    cameras = orbit_cameras([0.0, 90.0, 180.0, 270.0], polar_deg=[90.0, 70.0, 100.0, 60.0], radius=1.3,
                            width=64, height=64)
    with torch.no_grad():
        out = model.render(cameras)
    raster = make_rasterizer("cpu", "torch").rasterize(torch.as_tensor(flame_prior.vertices),
                                                       torch.as_tensor(flame_prior.faces).long(), cameras)
    opaque = out.opacity[:, 0] > 0.5
    iou = (opaque & raster.mask).sum(dim=(1, 2)) / (opaque | raster.mask).sum(dim=(1, 2))
    assert bool((iou >= 0.9).all()), iou
    # The occupancy grid starts from the prior: the samples in empty space are never evaluated.
    assert out.samples_evaluated < 0.5 * 4 * 64 * 64 * cfg.coarse.samples_per_ray
    assert 0.02 < model.grid.occupancy() < 0.2


def test_sphere_prior_silhouette_matches_the_analytic_one(prior):
    model = CoarseModel.create(preset_config("tiny").coarse, prior, "cpu")
    cameras = orbit_cameras([0.0, 90.0, 180.0, 270.0], polar_deg=[90.0, 70.0, 100.0, 60.0], radius=1.3,
                            width=48, height=48)
    with torch.no_grad():
        opaque = model.render(cameras).opacity[:, 0] > 0.5
    silhouette, _ = prior.ray_hits(cameras)
    iou = (opaque & silhouette).sum(dim=(1, 2)) / (opaque | silhouette).sum(dim=(1, 2))
    assert bool((iou >= 0.95).all()), iou


def test_oracle_guidance_trains_the_colours_of_a_painted_flame_head(flame_prior):
    # 100 iterations: held-out PSNR about 22.5 (measured: 17.7 after 20, 20.9 after 60, flat from 100).
    cfg = small_config(100)
    target = flame_painted_target(flame_prior)
    guidance = oracle_guidance(target, generator=torch.Generator().manual_seed(0))
    stage = CoarseStage(cfg, flame_prior, guidance, "cpu")
    held_out = orbit_cameras([30.0, 120.0, 210.0, 300.0], polar_deg=75.0, radius=1.3, width=32, height=32)

    def held_out_psnr() -> float:
        with torch.no_grad():
            return psnr(stage.model.render(held_out).image, target(held_out))

    before = held_out_psnr()
    for iteration in range(cfg.coarse.iterations):
        stage.step(iteration)
    after = held_out_psnr()
    assert before < 12.0
    assert after >= 20.0, (before, after)


def resume_config(iterations: int) -> RunConfig:
    cfg = small_config(iterations)
    c = cfg.coarse
    c.resolution, c.samples_per_ray, c.occupancy_update_every, c.warmup_iterations = 16, 16, 3, 2
    c.lambda_entropy, c.lambda_orientation, c.lambda_normal_consistency = 0.01, 0.01, 0.01
    c.checkpoint_every, c.preview_every = 100, 0
    return cfg


def trained_stage(prior, iterations: int, out_dir, cancel_after: int | None = None) -> CoarseStage:
    cfg = resume_config(iterations)
    guidance = oracle_guidance(painted_target(prior), generator=torch.Generator().manual_seed(1))
    stage = CoarseStage(cfg, prior, guidance, "cpu")
    done = []
    callbacks = RunCallbacks(on_progress=lambda p: p.iteration and done.append(p.iteration),
                             should_cancel=lambda: cancel_after is not None and len(done) >= cancel_after)
    run_stage(stage, out_dir, callbacks, schedule=StageSchedule(checkpoint_every=100, preview_every=0))
    return stage


def test_resume_is_bit_identical(prior, tmp_path):
    straight = trained_stage(prior, 8, tmp_path / "straight")
    # Cancelled after 5 (the checkpoint is written then), not a shorter run: the entropy weight's ramp
    # follows the run's total length, as in the authors' code.
    with pytest.raises(Cancelled):
        trained_stage(prior, 8, tmp_path / "resumed", cancel_after=5)
    resumed = trained_stage(prior, 8, tmp_path / "resumed")  # resumes for 3 more
    a, b = straight.state_dict(), resumed.state_dict()
    for key, value in a["model"]["field"].items():
        assert torch.equal(value, b["model"]["field"][key]), key
    for key, value in a["model"]["background"].items():
        assert torch.equal(value, b["model"]["background"][key]), key
    assert torch.equal(a["model"]["grid"]["estimates"], b["model"]["grid"]["estimates"])
    assert torch.equal(a["generator"], b["generator"])
    # And training did change the parameters (the comparison is not between two untouched fields).
    fresh = CoarseStage(resume_config(8), prior, oracle_guidance(painted_target(prior)), "cpu")
    assert not torch.equal(fresh.model.field.state_dict()["net.0.weight"], a["model"]["field"]["net.0.weight"])


def test_cancel_stops_within_one_iteration_and_keeps_the_checkpoint(prior, tmp_path):
    cfg = resume_config(10)
    cfg.coarse.checkpoint_every = 2
    done = []

    def on_progress(progress):
        if progress.iteration:
            done.append(progress.iteration)

    callbacks = RunCallbacks(on_progress=on_progress, should_cancel=lambda: len(done) >= 3)
    with pytest.raises(Cancelled):
        run_coarse(cfg, prior, oracle_guidance(painted_target(prior)), tmp_path, callbacks, "cpu")
    assert done == [1, 2, 3]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 3
    assert not (tmp_path / "coarse_mesh.obj").exists()


def test_run_coarse_writes_checkpoint_previews_mesh_and_loads_back(prior, tmp_path):
    import trimesh
    from PIL import Image

    cfg = preset_config("tiny")
    cfg.coarse.warmup_shading = "albedo"  # the oracle compares RGB pixels; a normal warm-up hands it latents
    result = run_coarse(cfg, prior, oracle_guidance(painted_target(prior)), tmp_path, device="cpu")
    assert result.checkpoint.exists() and result.mesh == tmp_path / "coarse_mesh.obj"
    assert [p.name for p in result.previews] == ["coarse_000003.png", "coarse_000006.png"]
    assert Image.open(result.previews[-1]).size == (3 * cfg.coarse.resolution, 2 * cfg.coarse.resolution)
    assert {"render_seconds_per_iteration", "guidance_seconds_per_iteration",
            "backward_seconds_per_iteration"} <= set(result.timings)
    mesh = trimesh.load(result.mesh, process=False)
    radii = torch.as_tensor(mesh.vertices).norm(dim=-1)
    # The density threshold sits just outside the prior surface (sigma_bar is sharp, a = 0.005).
    assert abs(float(radii.mean()) - prior.radius) < 0.03 and float(radii.std()) < 0.02
    model = load_coarse(tmp_path, cfg, prior, "cpu")
    points = torch.rand(100, 3) * 1.6 - 0.8
    state = load_checkpoint(result.checkpoint)["stage"]["model"]
    reference = CoarseModel.create(cfg.coarse, prior, "cpu")
    reference.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model.field.density(points), reference.field.density(points))
        assert model.field.albedo(points).shape == (100, 3)
        assert torch.allclose(model.field.normals(points).norm(dim=-1), torch.ones(100), atol=1e-5)
