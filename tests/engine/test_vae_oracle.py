"""The oracle guidance through the tiny VAE: optimising an image by VAE encode + SDS reaches the target."""
import torch
from guidance_test_support import fit_image

from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.config import preset_config
from headsculpt_engine.guidance.diffusion import VaeCodec
from headsculpt_engine.guidance.oracle import oracle_guidance
from headsculpt_engine.models.loading import load_diffusion_models


def test_sds_through_the_vae_pulls_an_image_to_the_target():
    models = load_diffusion_models(preset_config("tiny").models, "cpu")
    codec = VaeCodec(models.vae, resolution=64)
    gen = torch.Generator().manual_seed(0)
    # A smooth target with structure (bilinear upsampled noise), as renders are.
    target = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=gen), size=(64, 64),
                                             mode="bilinear", align_corners=False)
    cams = orbit_cameras([0.0], width=64, height=64)
    guidance = oracle_guidance(lambda c: target, codec=codec, generator=torch.Generator().manual_seed(1))
    before, after = fit_image(guidance, cams, target, lr=0.02, steps=150)
    assert after > before + 10, (before, after)
