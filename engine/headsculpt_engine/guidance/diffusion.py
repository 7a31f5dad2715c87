"""The latent-diffusion parts of a guidance: the VAE codec and ControlNet-conditioned noise predictors.

All noise predictions of one step (unconditional and conditional, identity and edit) go through the
UNet in ONE batched call; each ControlNet runs once on the rows it conditions and its residuals are
zero for the other rows, which makes those rows exactly the plain UNet. A row conditioned by several
ControlNets gets the sum of their residuals, as diffusers' MultiControlNetModel adds them. With an
image prompt (IP-Adapter), the IP-Adapter's scale is one number per UNet call, so rows with different
scales (front and back views) go through one UNet call per scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..errors import InputError
from ..profiling import section
from .base import GuidanceInputs, NoisePrediction
from .image_prompt import ImagePrompt, ImageRows, set_ip_adapter_scale

if TYPE_CHECKING:
    import torch

    from ..models.loading import DiffusionModels


def resize(images: "torch.Tensor", resolution: int) -> "torch.Tensor":
    """Square-resize (B, C, H, W) images to the guidance resolution (bilinear, antialiased when shrinking)."""
    import torch.nn.functional as F

    if images.shape[-2:] == (resolution, resolution):
        return images
    shrink = images.shape[-1] > resolution or images.shape[-2] > resolution
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=shrink)


class VaeCodec:
    """Renders in [0, 1] -> VAE latents (differentiable), as latent diffusion expects them:
    resized to the guidance resolution, mapped to [-1, 1], encoded, scaled by the VAE's factor.

    The posterior mean is used rather than a sample: SD's VAE posterior is nearly deterministic, and
    the mean keeps a step reproducible from the guidance's own generator alone.
    """

    def __init__(self, vae, resolution: int, slicing: bool = False):
        self.vae = vae
        self.resolution = resolution
        self.slicing = slicing
        self.scaling_factor = float(vae.config.scaling_factor)
        self.downsampling = 2 ** (len(vae.config.block_out_channels) - 1)  # 8 for SD's VAE

    def encode(self, images: "torch.Tensor") -> "torch.Tensor":
        import torch

        with section("vae_encode"):
            x = resize(images, self.resolution) * 2.0 - 1.0
            x = x.to(self.vae.dtype)
            chunks = x.split(1) if self.slicing else [x]  # slicing: one image at a time, less memory
            latents = torch.cat([self.vae.encode(c).latent_dist.mean for c in chunks])
            return latents * self.scaling_factor

    def as_latents(self, maps: "torch.Tensor") -> "torch.Tensor":
        """Maps resized (bilinear, as the authors' code) to the latent size of the guidance resolution."""
        import torch.nn.functional as F

        size = self.resolution // self.downsampling
        return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False) * 2.0 - 1.0


@dataclass
class Control:
    """One ControlNet applied to some rows of a branch."""

    model: object  # diffusers ControlNetModel
    image: "torch.Tensor"  # (B, 3, R, R) in [0, 1] at the guidance resolution
    active: "torch.Tensor"  # (B,) bool: rows that get this ControlNet's residuals
    scale: float = 1.0


@dataclass
class Branch:
    """One conditioning of the UNet for the whole batch: text embeddings and the ControlNets (none,
    one or several, whose residuals add up) that condition its rows."""

    embeddings: "torch.Tensor"  # (B, L, D)
    controls: tuple[Control, ...] = ()
    image: ImageRows | None = None  # the IP-Adapter's image conditioning (image prompts only)


class ControlledUNet:
    """Runs several branches through the UNet with their ControlNet residuals: in one batched call
    (`batched`, the fast path), or one call per branch (less activation memory at a time)."""

    def __init__(self, unet, batched: bool = True):
        self.unet = unet
        self.batched = batched

    def __call__(self, noisy: "torch.Tensor", timesteps: "torch.Tensor", branches: Sequence[Branch]) -> list["torch.Tensor"]:
        with section("unet_controlnet"):
            if self.batched:
                return self._predict(noisy, timesteps, branches)
            return [self._predict(noisy, timesteps, [branch])[0] for branch in branches]

    def _predict(self, noisy: "torch.Tensor", timesteps: "torch.Tensor", branches: Sequence[Branch]) -> list["torch.Tensor"]:
        import torch

        count, batch = len(branches), noisy.shape[0]
        dtype = self.unet.dtype
        sample = noisy.to(dtype).repeat(count, 1, 1, 1)
        steps = timesteps.repeat(count)
        embeddings = torch.cat([b.embeddings for b in branches]).to(dtype)
        down, mid = None, None
        for model in dict.fromkeys(c.model for b in branches for c in b.controls):
            rows, images, scale = self._rows(branches, model, batch)
            if rows.numel() == 0:
                continue
            rows = rows.to(sample.device)
            d, m = model(sample[rows], steps[rows], encoder_hidden_states=embeddings[rows],
                         controlnet_cond=images.to(dtype), conditioning_scale=scale, return_dict=False)
            d = [self._scatter(r, rows, count * batch) for r in d]
            m = self._scatter(m, rows, count * batch)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        images = [b.image for b in branches]
        if all(image is None for image in images):
            eps = self.unet(sample, steps, encoder_hidden_states=embeddings, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid, return_dict=False)[0]
        else:
            eps = self._predict_with_image(sample, steps, embeddings, down, mid, images)
        return list(eps.float().split(batch))

    def _predict_with_image(self, sample, steps, embeddings, down, mid, images: Sequence[ImageRows | None]):
        """The UNet with the IP-Adapter: one call per distinct scale among the rows."""
        import torch

        if any(image is None for image in images):
            raise ValueError("With an image prompt every branch must carry its image rows.")
        embeds = torch.cat([image.embeds for image in images]).to(sample.device, self.unet.dtype)
        scales = torch.cat([image.scales for image in images])
        eps = None
        for scale in scales.unique().tolist():
            rows = (scales == scale).nonzero().flatten().to(sample.device)
            set_ip_adapter_scale(self.unet, scale)
            part = self.unet(sample[rows], steps[rows], encoder_hidden_states=embeddings[rows],
                             down_block_additional_residuals=None if down is None else [d[rows] for d in down],
                             mid_block_additional_residual=None if mid is None else mid[rows],
                             added_cond_kwargs={"image_embeds": [embeds[rows]]}, return_dict=False)[0]
            eps = part.new_zeros((sample.shape[0], *part.shape[1:])) if eps is None else eps
            eps[rows] = part
        return eps

    @staticmethod
    def _rows(branches: Sequence[Branch], model, batch: int):
        """The rows (of the stacked branches) this ControlNet conditions, their control images, its scale."""
        import torch

        rows, images, scales = [], [], set()
        for index, branch in enumerate(branches):
            for control in branch.controls:
                if control.model is not model:
                    continue
                active = control.active.cpu().nonzero().flatten()
                rows.append(active + index * batch)
                images.append(control.image[active.to(control.image.device)])
                scales.add(float(control.scale))
        if len(scales) > 1:
            raise ValueError("One ControlNet must have one conditioning scale within a step.")
        return torch.cat(rows), torch.cat(images), scales.pop()

    @staticmethod
    def _scatter(residual: "torch.Tensor", rows: "torch.Tensor", total: int) -> "torch.Tensor":
        full = residual.new_zeros((total, *residual.shape[1:]))
        full[rows] = residual
        return full


class LandmarkPredictor:
    """eps(z_t; t, y, landmark map): the UNet with the face-landmark ControlNet (HeadSculpt Eq. 5),
    unconditional (negative prompt) and conditional (view-dependent prompt) in one UNet call.

    Back views: with policy "none" the rows of back views, and of empty landmark maps, get no
    ControlNet residuals (HeadSculpt); with "oval" every row keeps the ControlNet (HeadArtist).
    """

    def __init__(self, models: "DiffusionModels", prompt: str, negative_prompt: str = "", resolution: int = 512,
                 back_view_policy: str = "none", controlnet_scale: float = 1.0, batched_cfg: bool = True,
                 image: ImagePrompt | None = None):
        self.models = models
        self.image = image
        self.unet = ControlledUNet(models.unet, batched=batched_cfg)
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.resolution = resolution
        self.back_view_policy = back_view_policy
        self.controlnet_scale = controlnet_scale

    def branches(self, inputs: GuidanceInputs) -> list[Branch]:
        """[unconditional, conditional] for this batch."""
        import torch

        views = inputs.cameras.view_names()
        prompts = self.models.prompts
        cond = prompts.embed(prompts.view_prompts(self.prompt, views))
        uncond = prompts.embed([self.negative_prompt] * len(views))
        controls: tuple[Control, ...] = ()
        if inputs.landmark_maps is not None:
            maps = resize(inputs.landmark_maps.to(self.models.device).float(), self.resolution)
            active = torch.ones(len(views), dtype=torch.bool)
            if self.back_view_policy == "none":
                empty = maps.flatten(1).amax(dim=1).cpu() <= 0
                back = torch.tensor([v == "back" for v in views])
                active = ~(empty | back)
            controls = (Control(self.models.face_controlnet, maps, active, self.controlnet_scale),)
        if self.image is None:
            return [Branch(uncond, controls), Branch(cond, controls)]
        return [Branch(uncond, controls, self.image.rows(views, conditional=False)),
                Branch(cond, controls, self.image.rows(views, conditional=True))]

    def __call__(self, noisy, timesteps, latents, inputs: GuidanceInputs) -> NoisePrediction:
        uncond, cond = self.unet(noisy, timesteps, self.branches(inputs))
        return NoisePrediction(uncond=uncond, cond=cond)


@dataclass
class BlendedPrediction:
    """IESD (HeadSculpt Eq. 7): w_e * eps_cfg(edit) + (1 - w_e) * eps_cfg(identity), each side with its
    own classifier-free guidance scale (the identity side takes the step's scale)."""

    identity: NoisePrediction
    edit: NoisePrediction
    edit_weight: float
    edit_guidance_scale: float

    def guided(self, scale: float) -> "torch.Tensor":
        return (self.edit_weight * self.edit.guided(self.edit_guidance_scale)
                + (1.0 - self.edit_weight) * self.identity.guided(scale))


class EditPredictor:
    """IESD's two predictions (HeadSculpt Eq. 7) through the same UNet in one call, BOTH conditioned on
    both ControlNets: the landmark ControlNet C(P) on the landmark map, and the InstructPix2Pix
    ControlNet I(M) on the pre-edit avatar's render from the same camera (`reference_images`).
    The identity side has the view-dependent original prompt, the edit side the instruction as it is
    (the authors' code embeds it once, without view words); both sides' unconditional rows take the
    run's negative prompt, as the authors' code does. Rows whose landmark map the identity predictor
    leaves uncontrolled (back views under policy "none", empty maps) keep the IP2P ControlNet alone,
    as the authors' code does on back views."""

    def __init__(self, identity: LandmarkPredictor, instruction: str, edit_weight: float,
                 edit_guidance_scale: float, ip2p_scale: float = 1.0):
        if identity.models.ip2p_controlnet is None:
            raise ValueError("IESD needs the InstructPix2Pix ControlNet: load the models with with_ip2p=True.")
        self.identity = identity
        self.instruction = instruction
        self.edit_weight = edit_weight
        self.edit_guidance_scale = edit_guidance_scale
        self.ip2p_scale = ip2p_scale

    def __call__(self, noisy, timesteps, latents, inputs: GuidanceInputs) -> BlendedPrediction:
        import torch

        if inputs.reference_images is None:
            raise InputError("Editing needs the pre-edit avatar's renders (reference_images) for each camera.")
        models = self.identity.models
        batch = noisy.shape[0]
        reference = resize(inputs.reference_images.to(models.device).float(), self.identity.resolution)
        ip2p = Control(models.ip2p_controlnet, reference, torch.ones(batch, dtype=torch.bool), self.ip2p_scale)
        id_uncond, id_cond = self.identity.branches(inputs)
        controls = id_cond.controls + (ip2p,)
        edit_cond = models.prompts.embed([self.instruction] * batch)
        # With an image prompt, each side's rows keep the identity side's image rows (zero for unconditional).
        branches = [Branch(id_uncond.embeddings, controls, id_uncond.image),
                    Branch(id_cond.embeddings, controls, id_cond.image),
                    Branch(id_uncond.embeddings, controls, id_uncond.image), Branch(edit_cond, controls, id_cond.image)]
        id_u, id_c, edit_u, edit_c = self.identity.unet(noisy, timesteps, branches)
        return BlendedPrediction(identity=NoisePrediction(id_u, id_c), edit=NoisePrediction(edit_u, edit_c),
                                 edit_weight=self.edit_weight, edit_guidance_scale=self.edit_guidance_scale)
