"""The coarse/fine shading schedule and regularisers as the authors' code has them, on small analytic
cases: values and gradients of the entropy and orientation penalties, the entropy ramp, the schedule's
draws, the optimiser groups, solid backgrounds, and the [normal, opacity] latent warm-up."""
from __future__ import annotations

import math

import pytest
import torch

from headsculpt_engine.config import CoarseConfig, preset_config
from headsculpt_engine.nerf.render import orientation_penalty, weight_entropy
from headsculpt_engine.stages.coarse import entropy_lambda
from headsculpt_engine.stages.shading import draw_lights, draw_shading


def test_weight_entropy_values_and_gradient():
    w = torch.tensor([0.5, 0.25, 1e-9], requires_grad=True)
    value = weight_entropy(w)
    h = lambda p: -p * math.log2(p) - (1 - p) * math.log2(1 - p)  # noqa: E731
    assert math.isclose(float(value.detach()), (1.0 + h(0.25) + h(1e-5)) / 3, rel_tol=1e-5)
    value.backward()
    # dH/dw = log2((1 - w) / w); zero at 1/2, and zero where the clamp holds the weight.
    expected = torch.tensor([0.0, math.log2(3.0), 0.0]) / 3
    assert torch.allclose(w.grad, expected, atol=1e-6)


def test_orientation_penalty_values_and_gradient():
    dirs = torch.tensor([[0.0, 0.0, -1.0]] * 3)  # rays along -z
    # Facing the camera (no penalty), facing away at 60 degrees (cos = 0.5), facing away fully.
    normals = torch.tensor([[0.0, 0.0, 1.0], [0.0, math.sqrt(3) / 2, -0.5], [0.0, 0.0, -1.0]], requires_grad=True)
    weights = torch.tensor([0.9, 0.4, 0.2], requires_grad=True)
    value = orientation_penalty(normals, dirs, weights, rays=2)
    assert math.isclose(float(value.detach()), (0.4 * 0.25 + 0.2 * 1.0) / 2, rel_tol=1e-6)
    value.backward()
    assert weights.grad is None or torch.count_nonzero(weights.grad) == 0  # stop-gradient on the weights
    # d/dn of w (n.d)^2 / rays = 2 w (n.d) d / rays where n.d > 0, else 0.
    expected = torch.stack([torch.zeros(3), 2 * 0.4 * 0.5 * dirs[1] / 2, 2 * 0.2 * 1.0 * dirs[2] / 2])
    assert torch.allclose(normals.grad, expected, atol=1e-6)


def test_regulariser_defaults_and_entropy_ramp_are_the_authors():
    c = CoarseConfig()
    assert c.lambda_entropy == c.lambda_orientation == 5e-4
    assert c.grid_lr_scale == 10.0 and c.adam_eps == 1e-15
    assert c.warmup_iterations == 2000 and preset_config("paper").fine.warmup_iterations == 2000
    # lambda * min(1, 2 * it / iters): half at a quarter of the run, full from half-way.
    assert [entropy_lambda(c, it) for it in (0, 1750, 3500, 7000)] == pytest.approx([0.0, 2.5e-4, 5e-4, 5e-4])


def test_shading_schedule_draws_as_the_authors_code():
    c = CoarseConfig()
    gen = torch.Generator().manual_seed(0)
    warm = draw_shading(c, 1999, c.warmup_iterations, 4, gen)
    assert (warm.shading, warm.ambient, warm.warmup, warm.background) == ("normal", 1.0, True, None)
    c.warmup_shading = "albedo"
    assert draw_shading(c, 0, c.warmup_iterations, 4, gen).shading == "albedo"
    draws = [draw_shading(c, 2000 + i, c.warmup_iterations, 4, gen) for i in range(4000)]
    assert {d.shading for d in draws} == {"normal", "lambertian"} and not any(d.warmup for d in draws)
    normal = sum(d.shading == "normal" for d in draws) / len(draws)
    solid = [d.background for d in draws if d.background is not None]
    ambient = torch.tensor([d.ambient for d in draws])
    assert abs(normal - 0.2) < 0.03 and abs(len(solid) / len(draws) - 0.5) < 0.03
    assert 0.1 <= float(ambient.min()) and float(ambient.max()) <= 1.0 and abs(float(ambient.mean()) - 0.55) < 0.02
    assert all(b.shape == (4, 3) and 0 <= float(b.min()) and float(b.max()) <= 1 for b in solid)


def test_lights_sit_around_the_camera():
    positions = torch.tensor([[0.0, 0.0, 3.0]] * 2000)
    lights = draw_lights(positions, torch.Generator().manual_seed(1))
    assert torch.allclose(lights.norm(dim=-1), torch.ones(2000), atol=1e-5)
    # campos + N(0, I), normalised: mostly towards the camera's side, with some spread.
    assert float(lights[:, 2].mean()) > 0.8 and float(lights[:, :2].std()) > 0.1


def test_coarse_optimiser_groups():
    from analytic_prior import SpherePrior
    from headsculpt_engine.guidance.oracle import oracle_guidance
    from headsculpt_engine.stages.coarse import CoarseStage

    cfg = preset_config("tiny")
    stage = CoarseStage(cfg, SpherePrior(radius=0.6), oracle_guidance(lambda cams: None), "cpu")
    groups = stage.optimizer.param_groups
    encoding = {id(p) for p in stage.model.field.encoding.parameters()}
    assert [g["lr"] for g in groups] == [1e-2, 1e-3]
    assert {id(p) for p in groups[0]["params"]} == encoding
    assert not encoding & {id(p) for p in groups[1]["params"]}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(stage.model.parameters())
    assert all(g["eps"] == 1e-15 for g in groups)


def test_solid_backgrounds_per_view():
    from headsculpt_engine.cameras import orbit_cameras
    from headsculpt_engine.mesh.raster import make_rasterizer
    from headsculpt_engine.mesh.render import render_mesh

    cams = orbit_cameras([0.0, 180.0], width=16, height=16)
    tri = torch.tensor([[5.0, 5.0, 5.0], [5.1, 5.0, 5.0], [5.0, 5.1, 5.0]])  # out of view
    colours = torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.0, 0.5]])
    images, masks = render_mesh(make_rasterizer("cpu", "torch"), tri, torch.tensor([[0, 1, 2]]), cams,
                                lambda p: torch.ones_like(p), background=colours)
    assert masks.sum() == 0
    assert torch.allclose(images, colours.view(2, 3, 1, 1).expand_as(images))


def test_latent_warm_up_takes_the_maps_as_the_latents():
    """[normal map, opacity] go to the UNet as its latent (resized, to [-1, 1]), the VAE untouched,
    and the distillation gradient reaches the maps through the resize alone."""
    import torch.nn.functional as F

    from headsculpt_engine.guidance.base import GuidanceInputs
    from headsculpt_engine.guidance.diffusion import VaeCodec
    from headsculpt_engine.models.loading import load_diffusion_models
    from headsculpt_engine.cameras import orbit_cameras

    models = load_diffusion_models(preset_config("tiny").models, "cpu")
    codec = VaeCodec(models.vae, 32)
    assert codec.downsampling == 2  # the tiny VAE; SD's is 8
    maps = torch.rand(2, 4, 24, 24, requires_grad=True)
    latents = codec.as_latents(maps)
    assert latents.shape == (2, 4, 16, 16)
    assert torch.allclose(latents, F.interpolate(maps, size=(16, 16), mode="bilinear", align_corners=False) * 2 - 1)

    from headsculpt_engine.guidance.factory import build_guidance

    cfg = preset_config("tiny")
    cfg.guidance.resolution = 32
    guidance = build_guidance(cfg, models, "a man", generator=torch.Generator().manual_seed(3))
    calls = []
    encode = models.vae.encode
    models.vae.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    try:
        out = guidance(GuidanceInputs(images=maps, cameras=orbit_cameras([0.0, 90.0], width=24, height=24),
                                      as_latent=True))
    finally:
        models.vae.encode = encode
    assert not calls
    out.loss.backward()
    up = torch.zeros_like(maps, requires_grad=True)
    (F.interpolate(up, size=(16, 16), mode="bilinear", align_corners=False) * 2 * out.grad / 2).sum().backward()
    assert torch.allclose(maps.grad, up.grad, atol=1e-6) and maps.grad.abs().sum() > 0
