import torch
from guidance_test_support import fit_image

from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.guidance.base import GuidanceInputs, add_noise, sd_alphas_cumprod, sds_weight
from headsculpt_engine.guidance.oracle import oracle_guidance


def test_pixel_oracle_pulls_an_image_to_its_target():
    torch.manual_seed(0)
    target = torch.rand(1, 3, 16, 16)
    cams = orbit_cameras([0.0], width=16, height=16)
    guidance = oracle_guidance(lambda c: target, generator=torch.Generator().manual_seed(0))
    before, after = fit_image(guidance, cams, target, lr=0.05, steps=200)
    assert after > before + 15


def test_oracle_gradient_is_weighted_noise_difference():
    """grad = w(t) * (eps_hat - eps) with eps_hat the noise that leads to the target; and the latent
    gradient of the loss is grad / batch."""
    target = torch.rand(2, 3, 8, 8)
    image = torch.rand(2, 3, 8, 8, requires_grad=True)
    cams = orbit_cameras([0.0, 180.0], width=8, height=8)
    guidance = oracle_guidance(lambda c: target, generator=torch.Generator().manual_seed(3))
    out = guidance(GuidanceInputs(images=image, cameras=cams))
    out.loss.backward()
    # Recompute independently with the same random draws.
    gen = torch.Generator().manual_seed(3)
    alphas = sd_alphas_cumprod()
    t = torch.randint(20, 980, (2,), generator=gen)
    eps = torch.randn(2, 3, 8, 8, generator=gen)
    z, zt = image.detach() * 2 - 1, target * 2 - 1
    noisy = add_noise(z, eps, alphas, t)
    abar = alphas[t].view(-1, 1, 1, 1)
    eps_hat = (noisy - abar.sqrt() * zt) / (1 - abar).sqrt()
    expected = sds_weight(alphas, t) * (eps_hat - eps)
    assert torch.equal(out.timesteps, t)
    assert torch.allclose(out.grad, expected, atol=1e-5)
    # d loss / d image = d loss / d z * 2 = grad / batch * 2
    assert torch.allclose(image.grad, expected / 2 * 2, atol=1e-5)
