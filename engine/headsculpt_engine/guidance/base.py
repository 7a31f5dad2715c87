"""The interface every guidance shares, and the score-distillation arithmetic they have in common.

A guidance turns a batch of differentiable renders into a loss whose gradient is the distillation
gradient (HeadSculpt Eq. 1/5): the stages call `guidance(GuidanceInputs(...))` and backpropagate
`output.loss`. Guidances are built from two swappable parts:

- a `LatentCodec`, which maps renders in [0, 1] to the space the denoiser works in (the VAE of latent
  diffusion, or the identity for pixel-space oracles), and
- a `NoisePredictor`, which predicts the noise of a noisy latent, unconditionally and conditionally,
  so that classifier-free guidance, SSD and IESD can combine the two predictions as they need.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras


@dataclass
class GuidanceInputs:
    """What a stage hands the guidance for one step."""

    images: "torch.Tensor"  # (B, 3, H, W) renders in [0, 1], differentiable
    cameras: "Cameras"  # the cameras the renders were made from (view-dependent prompts)
    landmark_maps: "torch.Tensor | None" = None  # (B, 3, h, w) in [0, 1], drawn for those cameras
    reference_images: "torch.Tensor | None" = None  # (B, 3, H, W): IESD's M_pi from the same cameras
    t_range: "tuple[float, float] | None" = None  # overrides the guidance's range (fine stage, annealing)
    guidance_scale: "float | None" = None  # overrides the guidance's CFG scale (SSD geometry/texture)
    # `images` are (B, C, H, W) maps to be used as the latents themselves, resized and mapped to
    # [-1, 1] (the authors' coarse warm-up feeds [normal map, opacity] this way, as Fantasia3D).
    as_latent: bool = False


@dataclass
class GuidanceOutput:
    loss: "torch.Tensor"  # scalar; its gradient w.r.t. the latents is `grad / batch`
    grad: "torch.Tensor"  # (B, C, h, w) distillation gradient on the latents, detached
    timesteps: "torch.Tensor"  # (B,) the sampled diffusion timesteps


@dataclass
class NoisePrediction:
    uncond: "torch.Tensor"  # eps(z_t, t, empty or negative prompt)
    cond: "torch.Tensor"  # eps(z_t, t, prompt)

    def guided(self, scale: float) -> "torch.Tensor":
        """Classifier-free guidance: uncond + scale * (cond - uncond)."""
        return self.uncond + scale * (self.cond - self.uncond)


class Prediction(Protocol):
    """Anything that gives a classifier-free-guided noise prediction (a plain NoisePrediction, or
    IESD's blend of two)."""

    def guided(self, scale: float) -> "torch.Tensor":
        ...


class LatentCodec(Protocol):
    def encode(self, images: "torch.Tensor") -> "torch.Tensor":
        """Differentiable map of (B, 3, H, W) images in [0, 1] to latents."""

    def as_latents(self, maps: "torch.Tensor") -> "torch.Tensor":
        """(B, C, H, W) maps in [0, 1] taken as latents: resized to the latent size, mapped to [-1, 1]."""


class NoisePredictor(Protocol):
    def __call__(self, noisy: "torch.Tensor", timesteps: "torch.Tensor", latents: "torch.Tensor",
                 inputs: GuidanceInputs) -> Prediction:
        """Predict the noise in `noisy` at `timesteps`. `latents` are the clean latents z, which only
        oracle predictors look at; real denoisers ignore them."""


class Guidance(ABC):
    @abstractmethod
    def __call__(self, inputs: GuidanceInputs) -> GuidanceOutput:
        ...


class IdentityCodec:
    """Pixel space: the latents are the images themselves, mapped to [-1, 1]."""

    def encode(self, images: "torch.Tensor") -> "torch.Tensor":
        return images * 2.0 - 1.0

    def as_latents(self, maps: "torch.Tensor") -> "torch.Tensor":
        return maps * 2.0 - 1.0


def sd_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012) -> "torch.Tensor":
    """Stable Diffusion's `scaled_linear` noise schedule, as diffusers' DDPMScheduler builds it."""
    import torch

    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def sample_timesteps(batch: int, t_range: tuple[float, float], num_train_timesteps: int,
                     generator: "torch.Generator | None" = None, device=None) -> "torch.Tensor":
    """t ~ U[t_min, t_max] as a fraction of the schedule, as integer steps (one per sample)."""
    import torch

    lo = int(round(t_range[0] * num_train_timesteps))
    hi = int(round(t_range[1] * num_train_timesteps))
    hi = min(max(hi, lo + 1), num_train_timesteps)
    return torch.randint(lo, hi, (batch,), generator=generator).to(device)


def sds_weight(alphas_cumprod: "torch.Tensor", timesteps: "torch.Tensor") -> "torch.Tensor":
    """w(t) = sqrt(alpha_bar_t) * (1 - alpha_bar_t), shaped (B, 1, 1, 1)."""
    abar = alphas_cumprod.to(timesteps.device)[timesteps]
    return (abar.sqrt() * (1.0 - abar)).view(-1, 1, 1, 1)


def add_noise(latents: "torch.Tensor", noise: "torch.Tensor", alphas_cumprod: "torch.Tensor",
              timesteps: "torch.Tensor") -> "torch.Tensor":
    """z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps."""
    abar = alphas_cumprod.to(latents.device)[timesteps].view(-1, 1, 1, 1).to(latents.dtype)
    return abar.sqrt() * latents + (1.0 - abar).sqrt() * noise


def distillation_loss(latents: "torch.Tensor", grad: "torch.Tensor", clip: float = 0.0) -> tuple["torch.Tensor", "torch.Tensor"]:
    """loss = 0.5 * ||z - stopgrad(z - grad)||^2 / batch, whose gradient w.r.t. z is grad / batch.

    The gradient is cleaned of NaN/inf first, and clipped elementwise to `clip` when that is > 0.
    Returns the loss and the cleaned gradient.
    """
    import torch

    grad = torch.nan_to_num(grad.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    if clip > 0:
        grad = grad.clamp(-clip, clip)
    target = (latents.float() - grad).detach()
    loss = 0.5 * torch.nn.functional.mse_loss(latents.float(), target, reduction="sum") / latents.shape[0]
    return loss, grad
