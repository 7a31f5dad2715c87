"""Score distillation (HeadSculpt Eq. 1 and 5; HeadArtist Eq. 6).

SDS: grad = w(t) * (eps_hat - eps), eps the random noise added to the latents.
SSD: grad = w(t) * (eps_cfg - eps_cfg1), the prediction at the guidance scale minus the one at scale 1;
no random noise enters the gradient.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from .base import (Guidance, GuidanceInputs, GuidanceOutput, LatentCodec, NoisePredictor, add_noise,
                   distillation_loss, sample_timesteps, sds_weight)

if TYPE_CHECKING:
    import torch

Baseline = Literal["noise", "cfg1"]


class ScoreDistillation(Guidance):
    """SDS (baseline "noise") or SSD (baseline "cfg1") over any codec and noise predictor.

    With the landmark-ControlNet predictor this is HeadSculpt's guidance (or HeadArtist's with
    "cfg1"); with the blended edit predictor it is IESD (Eq. 7); with an oracle predictor it is the
    test guidance.
    """

    def __init__(self, codec: LatentCodec, predictor: NoisePredictor, alphas_cumprod: "torch.Tensor",
                 guidance_scale: float = 100.0, t_range: tuple[float, float] = (0.02, 0.98),
                 grad_clip: float = 0.0, generator: "torch.Generator | None" = None,
                 baseline: Baseline = "noise"):
        self.codec = codec
        self.predictor = predictor
        self.alphas_cumprod = alphas_cumprod
        self.guidance_scale = guidance_scale
        self.t_range = t_range
        self.grad_clip = grad_clip
        self.generator = generator
        self.baseline = baseline

    def __call__(self, inputs: GuidanceInputs) -> GuidanceOutput:
        import torch

        latents = self.codec.as_latents(inputs.images) if inputs.as_latent else self.codec.encode(inputs.images)
        batch = latents.shape[0]
        timesteps = sample_timesteps(batch, inputs.t_range or self.t_range, len(self.alphas_cumprod),
                                     self.generator, latents.device)
        noise = torch.randn(latents.shape, generator=self.generator).to(latents)
        with torch.no_grad():
            noisy = add_noise(latents.detach(), noise, self.alphas_cumprod, timesteps)
            prediction = self.predictor(noisy, timesteps, latents.detach(), inputs)
            scale = self.guidance_scale if inputs.guidance_scale is None else inputs.guidance_scale
            baseline = noise if self.baseline == "noise" else prediction.guided(1.0)
            grad = sds_weight(self.alphas_cumprod, timesteps) * (prediction.guided(scale).float() - baseline.float())
        loss, grad = distillation_loss(latents, grad, self.grad_clip)
        return GuidanceOutput(loss=loss, grad=grad, timesteps=timesteps)
