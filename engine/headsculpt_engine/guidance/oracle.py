"""An oracle denoiser that knows the answer, for convergence tests of every stage.

Its conditional prediction is the noise that would turn z_t back into the latent of a known target
image for the same camera; its unconditional prediction is the noise that turns z_t back into the
current latent. Score distillation with it therefore pulls renders towards the targets, so a stage
that works must converge to them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .base import GuidanceInputs, IdentityCodec, LatentCodec, NoisePrediction, sd_alphas_cumprod
from .sds import ScoreDistillation

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras

TargetFn = Callable[["Cameras"], "torch.Tensor"]  # cameras -> (B, 3, H, W) target images in [0, 1]


class OraclePredictor:
    def __init__(self, target: TargetFn, codec: LatentCodec, alphas_cumprod: "torch.Tensor"):
        self.target = target
        self.codec = codec
        self.alphas_cumprod = alphas_cumprod

    def __call__(self, noisy: "torch.Tensor", timesteps: "torch.Tensor", latents: "torch.Tensor",
                 inputs: GuidanceInputs) -> NoisePrediction:
        import torch.nn.functional as F

        target = self.target(inputs.cameras).to(inputs.images)
        if target.shape[-2:] != inputs.images.shape[-2:]:
            target = F.interpolate(target, size=inputs.images.shape[-2:], mode="bilinear", align_corners=False)
        target_latents = self.codec.encode(target).detach()
        return NoisePrediction(uncond=self._noise_towards(noisy, timesteps, latents),
                               cond=self._noise_towards(noisy, timesteps, target_latents))

    def _noise_towards(self, noisy, timesteps, clean) -> "torch.Tensor":
        abar = self.alphas_cumprod.to(noisy.device)[timesteps].view(-1, 1, 1, 1)
        return (noisy - abar.sqrt() * clean) / (1.0 - abar).sqrt()


def oracle_guidance(target: TargetFn, codec: LatentCodec | None = None, guidance_scale: float = 1.0,
                    t_range: tuple[float, float] = (0.02, 0.98),
                    generator: "torch.Generator | None" = None) -> ScoreDistillation:
    """SDS whose denoiser pulls renders towards `target(cameras)`, through `codec` (pixels if None)."""
    codec = codec or IdentityCodec()
    alphas = sd_alphas_cumprod()
    return ScoreDistillation(codec, OraclePredictor(target, codec, alphas), alphas,
                             guidance_scale=guidance_scale, t_range=t_range, generator=generator)
