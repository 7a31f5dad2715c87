"""Build the guidance a run asks for from its configuration and the loaded models."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

from .base import Guidance, GuidanceInputs, GuidanceOutput
from .diffusion import EditPredictor, LandmarkPredictor, VaeCodec
from .image_prompt import ImagePrompt, image_prompt, read_image
from .sds import ScoreDistillation

if TYPE_CHECKING:
    import torch

    from ..config import RunConfig
    from ..models.loading import DiffusionModels

Phase = Literal["geometry", "texture"]


class SsdPhases(Guidance):
    """HeadArtist's self score distillation in its two phases.

    geometry: normal-map renders, CFG `ssd_geometry_scale` (100), t in [t_min, `ssd_geometry_t_max`];
    texture: CFG `ssd_texture_scale` (7.5) with the SSD negative prompt, t_max `ssd_texture_t_max[0]`
    (0.98) stepping to `[1]` (0.7) from texture iteration `texture_t_step` (5000) on (HeadArtist
    appendix D).
    The stage calls `set_phase(phase, iteration)` (the renders it passes must match: normals for geometry).
    """

    def __init__(self, geometry: ScoreDistillation, texture: ScoreDistillation, t_min: float,
                 geometry_t_max: float, texture_t_max: tuple[float, float], texture_t_step: int):
        self.geometry = geometry
        self.texture = texture
        self.t_min = t_min
        self.geometry_t_max = geometry_t_max
        self.texture_t_max = texture_t_max
        self.texture_t_step = texture_t_step
        self.phase: Phase = "geometry"
        self.iteration = 0

    @property
    def generator(self) -> "torch.Generator | None":
        """The random stream both phases draw from (stages checkpoint it for an exact resume)."""
        return self.geometry.generator

    def set_phase(self, phase: Phase, iteration: int = 0) -> None:
        if phase not in ("geometry", "texture"):
            raise ValueError(f"Unknown SSD phase {phase!r}: 'geometry' or 'texture'.")
        self.phase, self.iteration = phase, max(int(iteration), 0)

    def t_range(self) -> tuple[float, float]:
        if self.phase == "geometry":
            return (self.t_min, self.geometry_t_max)
        before, after = self.texture_t_max
        return (self.t_min, before if self.iteration < self.texture_t_step else after)

    def __call__(self, inputs: GuidanceInputs) -> GuidanceOutput:
        if inputs.t_range is None:
            inputs = dataclasses.replace(inputs, t_range=self.t_range())
        return (self.geometry if self.phase == "geometry" else self.texture)(inputs)


def _prompt(cfg: "RunConfig", prompt: str | None) -> str:
    return cfg.guidance.prompt_prefix + (cfg.prompt if prompt is None else prompt)


def _landmark_predictor(cfg: "RunConfig", models: "DiffusionModels", prompt: str, negative: str) -> LandmarkPredictor:
    g = cfg.guidance
    return LandmarkPredictor(models, prompt, negative, g.resolution, g.back_views, g.controlnet_scale,
                             batched_cfg=g.batched_cfg, image=run_image_prompt(cfg, models))


def run_image_prompt(cfg: "RunConfig", models: "DiffusionModels") -> ImagePrompt | None:
    """The run's image prompt (`guidance.image`), encoded by the IP-Adapter's image encoder."""
    g = cfg.guidance
    if not g.image:
        return None
    return image_prompt(models, read_image(g.image), g.image_scale, g.image_back_scale)


def _generator(cfg: "RunConfig", generator: "torch.Generator | None") -> "torch.Generator":
    """The given generator, else one seeded from the run's seed: a run's noise and timesteps then
    depend on its seed alone, and stages can checkpoint the stream for an exact resume."""
    import torch

    return generator if generator is not None else torch.Generator().manual_seed(cfg.seed)


def _distillation(cfg: "RunConfig", models: "DiffusionModels", predictor, scale: float,
                  generator: "torch.Generator", baseline: str = "noise") -> ScoreDistillation:
    g = cfg.guidance
    codec = VaeCodec(models.vae, g.resolution, slicing=models.config.vae_slicing)
    return ScoreDistillation(codec, predictor, models.alphas_cumprod, guidance_scale=scale, t_range=g.t_range,
                             grad_clip=g.grad_clip, generator=generator, baseline=baseline)  # type: ignore[arg-type]


def build_guidance(cfg: "RunConfig", models: "DiffusionModels", prompt: str | None = None,
                   generator: "torch.Generator | None" = None) -> Guidance:
    """Generation guidance: SDS with the landmark ControlNet (kind "sds"), or `SsdPhases` ("ssd").
    `prompt` defaults to cfg.prompt; the guidance's prompt prefix is put in front. Without a
    `generator`, one seeded from cfg.seed (both SSD phases share it)."""
    g = cfg.guidance
    generator = _generator(cfg, generator)
    text = _prompt(cfg, prompt)
    if g.kind == "sds":
        negative = cfg.negative_prompt or g.negative_prompt
        return _distillation(cfg, models, _landmark_predictor(cfg, models, text, negative), g.guidance_scale, generator)
    if g.kind == "ssd":
        geometry_negative = cfg.negative_prompt or g.negative_prompt
        texture_negative = cfg.negative_prompt or g.ssd_negative_prompt
        geometry = _distillation(cfg, models, _landmark_predictor(cfg, models, text, geometry_negative),
                                 g.ssd_geometry_scale, generator, baseline="cfg1")
        texture = _distillation(cfg, models, _landmark_predictor(cfg, models, text, texture_negative),
                                g.ssd_texture_scale, generator, baseline="cfg1")
        return SsdPhases(geometry, texture, g.t_range[0], g.ssd_geometry_t_max, g.ssd_texture_t_max,
                         g.ssd_texture_t_step)
    raise ValueError(f"Unknown guidance kind {g.kind!r}: 'sds' or 'ssd'.")


def build_edit_guidance(cfg: "RunConfig", models: "DiffusionModels", prompt: str, instruction: str,
                        edit_scale: float | None = None, generator: "torch.Generator | None" = None) -> Guidance:
    """IESD (HeadSculpt Eq. 7): w_e = `edit_scale` (default cfg.guidance.edit_scale) on the instruction's
    prediction, 1 - w_e on the original prompt's; needs models loaded with_ip2p=True."""
    g = cfg.guidance
    generator = _generator(cfg, generator)
    identity = _landmark_predictor(cfg, models, g.prompt_prefix + prompt, cfg.negative_prompt or g.negative_prompt)
    weight = g.edit_scale if edit_scale is None else edit_scale
    predictor = EditPredictor(identity, instruction, weight, g.edit_guidance_scale, g.ip2p_scale)
    return _distillation(cfg, models, predictor, g.guidance_scale, generator)
