"""The oracle guidance through the tiny VAE: optimising an image by VAE encode + SDS reaches the target."""
import torch

from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.config import preset_config
from headsculpt_engine.guidance.base import GuidanceInputs
from headsculpt_engine.guidance.diffusion import VaeCodec
from headsculpt_engine.guidance.oracle import oracle_guidance
from headsculpt_engine.models.loading import load_diffusion_models


def psnr(a, b):
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def test_sds_through_the_vae_pulls_an_image_to_the_target():
    models = load_diffusion_models(preset_config("tiny").models, "cpu")
    codec = VaeCodec(models.vae, resolution=64)
    gen = torch.Generator().manual_seed(0)
    # A smooth target with structure (bilinear upsampled noise), as renders are.
    target = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=gen), size=(64, 64),
                                             mode="bilinear", align_corners=False)
    cams = orbit_cameras([0.0], width=64, height=64)
    guidance = oracle_guidance(lambda c: target, codec=codec, generator=torch.Generator().manual_seed(1))
    image = torch.full((1, 3, 64, 64), 0.5, requires_grad=True)
    opt = torch.optim.Adam([image], lr=0.02)
    before = psnr(image.detach(), target)
    for _ in range(150):
        out = guidance(GuidanceInputs(images=image, cameras=cams))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        with torch.no_grad():
            image.clamp_(0, 1)
    after = psnr(image.detach(), target)
    assert after > before + 10, (before, after)
