"""Images sampled from the diffusion model on a prior's landmark maps (StyleAvatar3D's pose-guided
ControlNet images): a diffusers scheduler (DDIM or DPM-Solver++) over the UNet with the face ControlNet,
the view-dependent prompt and classifier-free guidance. The noise predictor is the guidance's own
(`LandmarkPredictor`), so back views follow the same policy: with "none" they are predicted by the plain
UNet, without the ControlNet, as HeadSculpt's guidance does."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras
    from ..guidance.image_prompt import ImagePrompt
    from ..models.loading import DiffusionModels

# diffusers scheduler classes by the --sampler name.
SAMPLERS = {"ddim": "DDIMScheduler", "dpmsolver": "DPMSolverMultistepScheduler"}


@dataclass
class SamplingOptions:
    steps: int = 30
    sampler: str = "dpmsolver"
    # 7.5: Stable Diffusion's usual sampling scale (the guidance's 100 is for score distillation only).
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    back_view_policy: str = "none"
    controlnet_scale: float = 1.0
    resolution: int = 512
    prompt_prefix: str = ""  # put in front of every prompt, as the guidance does


class LandmarkSampler:
    """`sample(prompt, cameras, maps, seed)` -> (B, H, W, 3) uint8 images, one per camera. The models'
    style LoRAs are in their UNet; `image` is an image prompt, taken on front and side views as the
    guidance takes it."""

    def __init__(self, models: "DiffusionModels", options: SamplingOptions, image: "ImagePrompt | None" = None):
        import diffusers

        self.models = models
        self.options = options
        self.image = image
        self.scheduler = getattr(diffusers, SAMPLERS[options.sampler]).from_config(models.scheduler.config)

    def sample(self, prompt: str, cameras: "Cameras", maps: "torch.Tensor", seed: int) -> np.ndarray:
        import torch

        from ..guidance.base import GuidanceInputs
        from ..guidance.diffusion import LandmarkPredictor, VaeCodec

        o, models = self.options, self.models
        predictor = LandmarkPredictor(models, o.prompt_prefix + prompt, o.negative_prompt, o.resolution, o.back_view_policy,
                                      o.controlnet_scale, image=self.image)
        codec = VaeCodec(models.vae, o.resolution)
        size = o.resolution // codec.downsampling
        shape = (len(cameras), models.unet.config.in_channels, size, size)
        # Drawn on the CPU: the same seed gives the same image on any device.
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(models.device)
        self.scheduler.set_timesteps(o.steps, device=models.device)
        latents = latents * self.scheduler.init_noise_sigma
        # Sampling renders nothing: `images` is unused by the predictor, only cameras and maps count.
        inputs = GuidanceInputs(images=maps, cameras=cameras, landmark_maps=maps)
        with torch.no_grad():
            for t in self.scheduler.timesteps:
                noisy = self.scheduler.scale_model_input(latents, t)
                eps = predictor(noisy, t.reshape(1).repeat(len(cameras)), latents, inputs).guided(o.guidance_scale)
                latents = self.scheduler.step(eps, t, latents).prev_sample
            decoded = models.vae.decode((latents / codec.scaling_factor).to(models.vae.dtype)).sample
        images = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().byte()
        return images.permute(0, 2, 3, 1).cpu().numpy()
