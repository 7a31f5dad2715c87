"""The edit stage under oracle denoisers (IESD's blend, Eq. 7), and M_pi from the trained render's cameras."""
from __future__ import annotations

import pytest
import torch
from mesh_test_support import SpherePrior, TinyColour, small_fine_config, target_renderer

from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.guidance.base import IdentityCodec, NoisePrediction, sd_alphas_cumprod
from headsculpt_engine.guidance.diffusion import BlendedPrediction
from headsculpt_engine.guidance.oracle import oracle_guidance
from headsculpt_engine.guidance.sds import ScoreDistillation
from headsculpt_engine.mesh.raster import make_rasterizer
from headsculpt_engine.mesh.render import render_mesh
from headsculpt_engine.stages import refine
from headsculpt_engine.stages.edit import run_edit
from headsculpt_engine.stages.fine import FineStage, run_fine

EDIT_COLOUR = torch.tensor([0.95, 0.55, 0.05])


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A finished 'generation': a fine run pulled a few steps towards a two-tone sphere."""
    folder = tmp_path_factory.mktemp("parent")
    prior = SpherePrior(radius=0.45)
    guidance = oracle_guidance(target_renderer(0.45), generator=torch.Generator().manual_seed(0))
    result = run_fine(small_fine_config(3), prior, guidance, folder / "fine", colour=TinyColour())
    return folder, prior, result


def recoloured(albedo_fn):
    """The edit's target look: the parent's albedo pulled most of the way to orange."""
    return lambda points: 0.25 * albedo_fn(points) + 0.75 * EDIT_COLOUR.to(points)


class OracleEdit:
    """IESD's two predictions made by oracles: the identity side pulls towards M_pi (the reference the
    stage hands over), the edit side towards the recoloured parent from the same cameras. The blend
    is the product's own (`BlendedPrediction`)."""

    def __init__(self, edit_target, edit_weight: float):
        self.edit_target = edit_target
        self.edit_weight = edit_weight
        self.alphas = sd_alphas_cumprod()

    def towards(self, noisy, timesteps, clean):
        abar = self.alphas[timesteps].view(-1, 1, 1, 1)
        return (noisy - abar.sqrt() * clean) / (1.0 - abar).sqrt()

    def __call__(self, noisy, timesteps, latents, inputs):
        current = self.towards(noisy, timesteps, latents)
        identity = self.towards(noisy, timesteps, inputs.reference_images * 2 - 1)
        edit = self.towards(noisy, timesteps, self.edit_target(inputs.cameras) * 2 - 1)
        return BlendedPrediction(identity=NoisePrediction(current, identity), edit=NoisePrediction(current, edit),
                                 edit_weight=self.edit_weight, edit_guidance_scale=1.0)


def render_albedo(vertices, faces, albedo_fn, cameras):
    with torch.no_grad():
        images, masks = render_mesh(make_rasterizer("cpu", "torch"), vertices, faces, cameras, albedo_fn, "albedo")
    return images, masks


def mean_colour(vertices, faces, albedo_fn) -> torch.Tensor:
    cams = orbit_cameras([0.0, 90.0, 180.0, 270.0], polar_deg=80.0, radius=1.3, fov_y_deg=40.0, width=48, height=48)
    images, masks = render_albedo(vertices, faces, albedo_fn, cams)
    return (images * masks).sum(dim=(0, 2, 3)) / masks.sum()


@pytest.mark.slow
def test_edit_weight_moves_the_avatar_from_its_look_to_the_edit(parent, tmp_path):
    folder, prior, start = parent
    edit_albedo = recoloured(start.albedo)

    def edit_target(cameras):
        return render_albedo(start.vertices, start.faces, edit_albedo, cameras)[0]

    before = mean_colour(start.vertices, start.faces, start.albedo)
    goal = mean_colour(start.vertices, start.faces, edit_albedo)
    share = {}
    for weight in (0.0, 0.5, 1.0):
        guidance = ScoreDistillation(IdentityCodec(), OracleEdit(edit_target, weight), sd_alphas_cumprod(),
                                     guidance_scale=1.0, generator=torch.Generator().manual_seed(5))
        result, timings = run_edit(small_fine_config(40), prior, guidance, folder / "fine", tmp_path / f"w{weight}",
                                   None, "cpu", reference=True, colour=TinyColour())
        after = mean_colour(result.vertices, result.faces, result.albedo)
        share[weight] = float(torch.dot(after - before, goal - before) / (goal - before).norm() ** 2)
        if weight == 0.0:
            assert float((after - before).abs().max()) < 0.03, (before, after)
        assert set(timings) == {"edit"}
    assert share[1.0] > 0.8, share
    assert 0.3 < share[0.5] < 0.7, share
    assert abs(share[0.0]) < 0.1, share


def test_reference_is_the_parent_rendered_from_the_trained_cameras(parent, tmp_path, monkeypatch):
    folder, prior, start = parent
    trained, referenced = [], []
    original_render, original_reference = FineStage.render, refine.FrozenAvatar.render

    def record_trained(self, cameras, *args, **kwargs):
        out = original_render(self, cameras, *args, **kwargs)
        if torch.is_grad_enabled():  # previews render without gradients
            trained.append((cameras, out[0].shape))
        return out

    def record_reference(self, cameras):
        images = original_reference(self, cameras)
        referenced.append((cameras, images))
        return images

    monkeypatch.setattr(FineStage, "render", record_trained)
    monkeypatch.setattr(refine.FrozenAvatar, "render", record_reference)
    seen = []

    def guidance_target(cameras):
        return torch.full((len(cameras), 3, cameras.height, cameras.width), 0.2)

    base = oracle_guidance(guidance_target, generator=torch.Generator().manual_seed(2))

    class Spy:
        generator = base.generator

        def __call__(self, inputs):
            seen.append(inputs)
            return base(inputs)

    run_edit(small_fine_config(3), prior, Spy(), folder / "fine", tmp_path / "edit", None, "cpu", reference=True,
             colour=TinyColour())

    assert len(trained) == len(referenced) == len(seen) == 3
    for (cams_t, shape_t), (cams_r, images_r), inputs in zip(trained, referenced, seen):
        assert cams_r is cams_t and inputs.cameras is cams_t
        assert images_r.shape == shape_t == inputs.images.shape
        assert torch.equal(inputs.reference_images, images_r)
        # The frozen pre-edit avatar in albedo on white (the authors' copy_model render), not the one
        # being trained: the parent rendered independently.
        expected, _ = render_albedo(start.vertices, start.faces, start.albedo, cams_r)
        assert torch.allclose(images_r, expected, atol=1e-5)
    # The trained avatar moved away from the parent meanwhile (the oracle pulls it to grey).
    last_cams = trained[-1][0]
    edited, _ = run_edit(small_fine_config(3), prior, None, folder / "fine", tmp_path / "edit", None, "cpu",
                         reference=True, colour=TinyColour())
    assert not torch.allclose(render_albedo(edited.vertices, edited.faces, edited.albedo, last_cams)[0],
                              referenced[-1][1], atol=1e-3)


def test_a_cancelled_edit_resumes_exactly_with_the_parent_as_reference(parent, tmp_path):
    from headsculpt_engine.errors import Cancelled
    from headsculpt_engine.stages.loop import RunCallbacks

    folder, prior, start = parent

    def edit_target(cameras):
        return render_albedo(start.vertices, start.faces, recoloured(start.albedo), cameras)[0]

    def guidance():
        return ScoreDistillation(IdentityCodec(), OracleEdit(edit_target, 0.5), sd_alphas_cumprod(),
                                 guidance_scale=1.0, generator=torch.Generator().manual_seed(8))

    cfg = small_fine_config(6)
    cfg.fine.checkpoint_every = 2
    straight, _ = run_edit(cfg, prior, guidance(), folder / "fine", tmp_path / "a", None, "cpu", reference=True,
                           colour=TinyColour())
    polls = {"n": 0}

    def cancel_after_three() -> bool:
        polls["n"] += 1
        return polls["n"] > 3

    with pytest.raises(Cancelled):
        run_edit(cfg, prior, guidance(), folder / "fine", tmp_path / "b", RunCallbacks(should_cancel=cancel_after_three),
                 "cpu", reference=True, colour=TinyColour())
    resumed, _ = run_edit(cfg, prior, guidance(), folder / "fine", tmp_path / "b", None, "cpu", reference=True,
                          colour=TinyColour())
    assert torch.equal(straight.faces, resumed.faces)
    assert torch.allclose(straight.vertices, resumed.vertices, atol=1e-6)
    points = torch.rand(64, 3) - 0.5
    assert torch.allclose(straight.albedo(points), resumed.albedo(points), atol=1e-6)
