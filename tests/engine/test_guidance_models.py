"""SDS, SSD and IESD with the tiny UNet + ControlNets, against independent computations (HeadSculpt
Eq. 1, 5, 7; HeadArtist Eq. 6)."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.config import apply_overrides, preset_config
from headsculpt_engine.fast_path import VARIANTS, fast_path_report
from headsculpt_engine.guidance.base import GuidanceInputs, sds_weight
from headsculpt_engine.guidance.factory import SsdPhases, build_edit_guidance, build_guidance
from headsculpt_engine.models.loading import load_diffusion_models

RES = 32  # guidance resolution: 16x16 latents with the tiny VAE
SEED = 11


@pytest.fixture(scope="module")
def models():
    return load_diffusion_models(preset_config("tiny").models, "cpu", with_ip2p=True)


@pytest.fixture()
def cfg():
    cfg = preset_config("tiny")
    cfg.guidance.resolution = RES
    # Small CFG scales on both IESD sides: at 100 the float rounding of batched vs per-row calls is
    # amplified a hundredfold, beyond the comparisons' tolerances.
    cfg.guidance.guidance_scale = cfg.guidance.edit_guidance_scale = 7.5
    return cfg


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    cams = orbit_cameras([0.0, 90.0, 180.0, 270.0], width=48, height=48)  # front, side, back, side
    images = torch.rand(4, 3, 48, 48, generator=gen)
    maps = torch.zeros(4, 3, RES, RES)
    # Drawings on the front, a side and (an oval, say) the back; the last side view's map is empty.
    maps[0, 1, 8:24, 10:22] = 0.8
    maps[1, 1, 10:20, 4:12] = 0.8
    maps[2, 1, 6:26, 6:26] = 0.8
    reference = torch.rand(4, 3, RES, RES, generator=gen)
    return cams, images, maps, reference


def embed(models, prompts):
    tokens = models.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return models.text_encoder(tokens)[0]


def eps_direct(models, noisy, t, text, controlnet=None, control=None):
    """One UNet call per sample and prompt, the ControlNet's residuals added by hand."""
    with torch.no_grad():
        kwargs = {}
        if controlnet is not None:
            down, mid = controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=control, return_dict=False)
            kwargs = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        return models.unet(noisy, t, encoder_hidden_states=text, **kwargs).sample


def latents_and_draws(models, images, seed, t_range=(0.02, 0.98)):
    """Latents, timesteps and noise as the guidance draws them from a generator with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = F.interpolate(images, size=(RES, RES), mode="bilinear", align_corners=False, antialias=True) * 2 - 1
        z = models.vae.encode(x).latent_dist.mean * models.vae.config.scaling_factor
    t = torch.randint(round(t_range[0] * 1000), round(t_range[1] * 1000), (len(images),), generator=gen)
    eps = torch.randn(z.shape, generator=gen)
    abar = models.alphas_cumprod[t].view(-1, 1, 1, 1)
    return z, t, eps, abar.sqrt() * z + (1 - abar).sqrt() * eps


def identity_eps(models, noisy, t, maps, prompt, views, scale, policy="none"):
    """CFG eps of the landmark side, sample by sample; back views without ControlNet under "none"."""
    out = []
    for i, view in enumerate(views):
        use_cn = policy == "oval" or (view != "back" and maps[i].amax() > 0)
        cn = models.face_controlnet if use_cn else None
        args = (noisy[i:i + 1], t[i:i + 1])
        u = eps_direct(models, *args, embed(models, [""]), cn, maps[i:i + 1])
        c = eps_direct(models, *args, embed(models, [f"{prompt}, {view} view"]), cn, maps[i:i + 1])
        out.append(u + scale * (c - u))
    return torch.cat(out)


def run(guidance, images, cams, maps=None, reference=None):
    image = images.clone().requires_grad_(True)
    out = guidance(GuidanceInputs(images=image, cameras=cams, landmark_maps=maps, reference_images=reference))
    out.loss.backward()
    return out, image


@pytest.mark.parametrize("policy", ["none", "oval"])
def test_sds_gradient_matches_independent_formula(models, cfg, batch, policy):
    cams, images, maps, _ = batch
    cfg.guidance.back_view_policy = policy
    guidance = build_guidance(cfg, models, "a man", generator=torch.Generator().manual_seed(SEED))
    out, image = run(guidance, images, cams, maps)

    z, t, eps, noisy = latents_and_draws(models, images, SEED)
    eps_hat = identity_eps(models, noisy, t, maps, "a man", cams.view_names(), 7.5, policy)
    expected = sds_weight(models.alphas_cumprod, t) * (eps_hat - eps)
    assert torch.equal(out.timesteps, t)
    assert torch.allclose(out.grad, expected, rtol=1e-4, atol=1e-5)
    assert expected.abs().mean() > 1e-3
    # The loss carries grad / batch to the latents, and from there into the images through the VAE.
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_controlnet_changes_the_prediction_and_back_views_skip_it(models, cfg, batch):
    """Not vacuous: the ControlNet residuals matter for front views, and under "none" the back view is
    exactly the plain UNet, while under "oval" it is not."""
    cams, images, maps, _ = batch
    _, t, _, noisy = latents_and_draws(models, images, SEED)
    text = embed(models, ["a man, front view"])
    with_cn = eps_direct(models, noisy[:1], t[:1], text, models.face_controlnet, maps[:1])
    plain = eps_direct(models, noisy[:1], t[:1], text)
    assert (with_cn - plain).abs().max() > 1e-3
    none = identity_eps(models, noisy, t, maps, "a man", cams.view_names(), 7.5, "none")
    oval = identity_eps(models, noisy, t, maps, "a man", cams.view_names(), 7.5, "oval")
    assert (none[2] - oval[2]).abs().max() > 1e-4


def eps_multi(models, noisy, t, text, maps, reference, with_landmarks):
    """One sample through diffusers' own MultiControlNetModel [landmark, IP2P] (the authors' sd.py),
    or the IP2P ControlNet alone where the landmark ControlNet does not apply (back views)."""
    from diffusers.models import MultiControlNetModel

    with torch.no_grad():
        if with_landmarks:
            net = MultiControlNetModel([models.face_controlnet, models.ip2p_controlnet])
            down, mid = net(noisy, t, encoder_hidden_states=text, controlnet_cond=[maps, reference],
                            conditioning_scale=[1.0, 1.0], return_dict=False)
        else:
            down, mid = models.ip2p_controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=reference,
                                               return_dict=False)
        return models.unet(noisy, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid).sample


def iesd_eps(models, noisy, t, maps, reference, prompt, instruction, views, scale, edit_scale, weight):
    """Eq. 7 sample by sample: both sides through both ControlNets, each CFG'd, then blended."""
    out = []
    for i, view in enumerate(views):
        args = (noisy[i:i + 1], t[i:i + 1])
        control = (maps[i:i + 1], reference[i:i + 1], view != "back" and maps[i].amax() > 0)
        u = eps_multi(models, *args, embed(models, [""]), *control)
        c = eps_multi(models, *args, embed(models, [f"{prompt}, {view} view"]), *control)
        e = eps_multi(models, *args, embed(models, [instruction]), *control)
        out.append(weight * (u + edit_scale * (e - u)) + (1 - weight) * (u + scale * (c - u)))
    return torch.cat(out)


@pytest.mark.parametrize("weight", [0.0, 0.6, 1.0])
def test_iesd_matches_eq7_through_diffusers_multicontrolnet(models, cfg, batch, weight):
    """HeadSculpt Eq. 7 as the authors' code computes it: both predictions conditioned on the landmark
    map AND the pre-edit render, each with its own CFG scale, blended with w_e; IP2P alone on the
    back view and on the view with an empty landmark map."""
    cams, images, maps, reference = batch
    cfg.guidance.edit_guidance_scale = 5.0  # differs from the identity side's 7.5: each side its own
    z, t, eps, noisy = latents_and_draws(models, images, SEED)
    edit = build_edit_guidance(cfg, models, "a man", "make him old", edit_scale=weight,
                               generator=torch.Generator().manual_seed(SEED))
    out, _ = run(edit, images, cams, maps, reference)
    eps_hat = iesd_eps(models, noisy, t, maps, reference, "a man", "make him old", cams.view_names(),
                       7.5, 5.0, weight)
    expected = sds_weight(models.alphas_cumprod, t) * (eps_hat - eps)
    assert torch.equal(out.timesteps, t)
    assert torch.allclose(out.grad, expected, rtol=1e-4, atol=1e-5)
    assert expected.abs().mean() > 1e-3


def test_iesd_is_not_either_controlnet_alone(models, cfg, batch):
    """Not vacuous: the IP2P ControlNet changes the identity side (w_e = 0 is not plain SDS), and the
    landmark ControlNet changes the edit side on front views."""
    cams, images, maps, reference = batch
    _, t, _, noisy = latents_and_draws(models, images, SEED)
    identity = build_guidance(cfg, models, "a man", generator=torch.Generator().manual_seed(SEED))
    edit0 = build_edit_guidance(cfg, models, "a man", "make him old", edit_scale=0.0,
                                generator=torch.Generator().manual_seed(SEED))
    id_out, _ = run(identity, images, cams, maps)
    out0, _ = run(edit0, images, cams, maps, reference)
    assert (out0.grad - id_out.grad).abs().max() > 1e-4
    text = embed(models, ["make him old"])
    both = eps_multi(models, noisy[:1], t[:1], text, maps[:1], reference[:1], True)
    ip2p_only = eps_multi(models, noisy[:1], t[:1], text, maps[:1], reference[:1], False)
    assert (both - ip2p_only).abs().max() > 1e-4


def test_iesd_edit_side_defaults_to_the_authors_scale():
    g = preset_config("paper").guidance
    assert g.edit_guidance_scale == g.guidance_scale == 100.0 and g.edit_scale == 0.6


def test_ssd_gradient(models, cfg, batch):
    cams, images, maps, _ = batch
    cfg.guidance.kind = "ssd"
    cfg.guidance.ssd_negative_prompt = ""
    z, t, eps, noisy = latents_and_draws(models, images, SEED, (0.02, 0.5))

    ssd = build_guidance(cfg, models, "a man", generator=torch.Generator().manual_seed(SEED))
    assert isinstance(ssd, SsdPhases) and ssd.t_range() == (0.02, 0.5)
    out, _ = run(ssd, images, cams, maps)
    # HeadArtist's back views keep the ControlNet (the face contour): policy "auto" is "oval" for SSD.
    cond1 = identity_eps(models, noisy, t, maps, "a man", cams.view_names(), 1.0, "oval")
    guided = identity_eps(models, noisy, t, maps, "a man", cams.view_names(), 100.0, "oval")
    expected = sds_weight(models.alphas_cumprod, t) * (guided - cond1)  # no random eps
    assert torch.allclose(out.grad, expected, rtol=1e-4, atol=1e-4)
    assert expected.abs().mean() > 1e-3

    cfg.guidance.ssd_geometry_scale = 1.0  # eps_cfg and eps_cfg1 coincide
    flat = build_guidance(cfg, models, "a man", generator=torch.Generator().manual_seed(SEED))
    out_flat, _ = run(flat, images, cams, maps)
    assert torch.count_nonzero(out_flat.grad) == 0


def test_ssd_texture_phase_steps_t_max_as_headartist(models, cfg):
    """HeadArtist appendix D: t_max 0.98, then 0.7 from texture iteration 5000 on; 15k + 20k iterations."""
    paper = preset_config("paper")
    assert (paper.fine.ssd_geometry_iterations, paper.fine.ssd_texture_iterations) == (15000, 20000)
    cfg.guidance.kind = "ssd"
    cfg.guidance.ssd_texture_t_step = paper.guidance.ssd_texture_t_step
    ssd = build_guidance(cfg, models, "a man")
    for iteration, t_max in ((0, 0.98), (4999, 0.98), (5000, 0.7), (19999, 0.7)):
        ssd.set_phase("texture", iteration)
        assert ssd.t_range() == pytest.approx((0.02, t_max)), iteration
    ssd.set_phase("geometry", 12000)
    assert ssd.t_range() == (0.02, 0.5)
    assert ssd.texture.guidance_scale == 7.5 and ssd.geometry.guidance_scale == 100.0
    assert ssd.texture.predictor.negative_prompt == "worst quality, low quality, semi-realistic"


def test_memory_options_do_not_change_the_gradient(models, cfg, batch):
    """Attention slicing and VAE slicing trade speed for memory, never results."""
    cams, images, maps, _ = batch
    sliced_cfg = dataclasses.replace(cfg.models, attention_slicing=True, vae_slicing=True)
    sliced = load_diffusion_models(sliced_cfg, "cpu")
    reference, _ = run(build_guidance(cfg, models, "a man", generator=torch.Generator().manual_seed(SEED)),
                       images, cams, maps)
    out, _ = run(build_guidance(cfg, sliced, "a man", generator=torch.Generator().manual_seed(SEED)),
                 images, cams, maps)
    assert torch.allclose(out.grad, reference.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if "edit" in v.stages], ids=lambda v: v.name)
def test_turning_a_fast_path_part_off_changes_speed_never_the_gradient(models, cfg, batch, variant):
    """What `headsculpt bench --ablate` measures is the same computation: IESD (both ControlNets, four
    branches) gives the same gradient with the part off, and the models are put back afterwards."""
    cams, images, maps, reference = batch

    def iesd_grad(settings):
        guidance = build_edit_guidance(settings, models, "a man", "make him old",
                                       generator=torch.Generator().manual_seed(SEED))
        out, _ = run(guidance, images, cams, maps, reference)
        return out.grad

    expected, report = iesd_grad(cfg), fast_path_report(models)
    with variant.applied(None, models):
        varied = iesd_grad(apply_overrides(copy.deepcopy(cfg), list(variant.overrides)))
    assert torch.allclose(varied, expected, rtol=1e-4, atol=1e-5)
    assert fast_path_report(models) == report and models.prompts.cache
    assert all("forward" not in vars(m) for m in (models.unet, models.face_controlnet, models.ip2p_controlnet))


def test_default_generator_follows_the_run_seed(models, cfg, batch):
    cams, images, maps, _ = batch
    cfg.seed = 123
    first, _ = run(build_guidance(cfg, models, "a man"), images, cams, maps)
    again, _ = run(build_guidance(cfg, models, "a man"), images, cams, maps)
    explicit, _ = run(build_guidance(cfg, models, "a man", generator=torch.Generator().manual_seed(123)),
                      images, cams, maps)
    assert torch.equal(first.timesteps, again.timesteps) and torch.equal(first.grad, again.grad)
    assert torch.equal(first.grad, explicit.grad)
    cfg.guidance.kind = "ssd"
    ssd = build_guidance(cfg, models, "a man")
    assert ssd.generator is ssd.geometry.generator is ssd.texture.generator


def test_iesd_needs_reference_renders_and_the_ip2p_controlnet(models, cfg, batch):
    from headsculpt_engine.errors import InputError

    cams, images, maps, _ = batch
    edit = build_edit_guidance(cfg, models, "a man", "make him old")
    with pytest.raises(InputError, match="reference"):
        edit(GuidanceInputs(images=images, cameras=cams, landmark_maps=maps))
    without_ip2p = dataclasses.replace(models, ip2p_controlnet=None)
    with pytest.raises(ValueError, match="with_ip2p"):
        build_edit_guidance(cfg, without_ip2p, "a man", "make him old")


def test_guidance_benchmark_times_a_step(capsys):
    """`python -m headsculpt_engine.guidance.benchmark` (docs/benchmarks.md, "Guidance") at a small size."""
    import re

    from headsculpt_engine.guidance.benchmark import main

    assert main(["--kind", "iesd", "--batch", "2", "--resolution", "32", "--repeats", "2"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    found = re.match(r"iesd step, batch 2, 32x32, models tiny, cpu, torch threads \d+: wall median ([\d.]+) ms "
                     r"\(min ([\d.]+); VAE encode ([\d.]+), UNet \+ ControlNet ([\d.]+)\), CPU median ([\d.]+) ms, n=2$",
                     line)
    assert found, line
    median, least, vae, unet, _ = map(float, found.groups())
    assert 0 < least <= median and 0 < vae < median and 0 < unet < median


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_networks_keep_the_float32_gradient(models, cfg, batch, dtype):
    """The CUDA set-up, here on the CPU: UNet, ControlNets and VAE (its encoder's backward included) in
    half precision, renders, loss and gradient in float32. The gradient reaches the float32 renders and
    stays close to the all-float32 one."""
    cams, images, maps, reference = batch
    half = load_diffusion_models(dataclasses.replace(cfg.models, dtype=dtype), "cpu", with_ip2p=True)
    assert half.unet.dtype == half.vae.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]

    def iesd(loaded):
        guidance = build_edit_guidance(cfg, loaded, "a man", "make him old", generator=torch.Generator().manual_seed(SEED))
        return run(guidance, images, cams, maps, reference)

    (full_out, full_image), (half_out, half_image) = iesd(models), iesd(half)
    assert half_out.grad.dtype == half_image.grad.dtype == torch.float32
    assert torch.isfinite(half_image.grad).all() and half_image.grad.abs().max() > 0

    def close(a, b):
        # (Predicting no noise at all would still give a cosine of about 0.94: the added noise is shared.)
        return F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.998 and (a - b).norm() < 0.05 * b.norm()

    assert close(half_out.grad, full_out.grad) and close(half_image.grad, full_image.grad)
