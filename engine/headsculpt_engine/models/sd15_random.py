"""`--models sd15-random`: the real SD 1.5 UNet, VAE, CLIP text encoder and ControlNets with random
weights, assembled into the `DiffusionModels` the guidance takes, so `headsculpt bench` measures the
real cost of a step without downloading anything.

Random weights make noise, so only the bench builds these (`models_config_from_cli` and
`load_diffusion_models` refuse the name). The tokenizer is the tiny models' CLIP tokenizer: its
token ids are all below SD's vocabulary of 49408, and the cost of a step does not depend on which
valid ids a prompt has (the text embeddings are computed once per prompt and cached anyway).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..config import ModelsConfig
from .loading import SD15_RANDOM, DiffusionModels, assemble_models, resolve_dtype, tiny_models_dir

if TYPE_CHECKING:
    import torch

# Stable Diffusion 1.5's training noise schedule (its scheduler/scheduler_config.json).
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, steps_offset=1)


def build_sd15_random_models(cfg: ModelsConfig | None, device: "torch.device | str",
                             with_ip2p: bool = False) -> DiffusionModels:
    """SD 1.5 with the face ControlNet (and the InstructPix2Pix one for editing), random weights,
    in `cfg`'s dtype (auto: fp16 on CUDA) and with its speed options. On the `meta` device the
    modules take no memory (for checking the assembly without running it)."""
    import torch
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    from .sd15_architecture import build_sd15_modules

    cfg = dataclasses.replace(cfg or ModelsConfig(), base=SD15_RANDOM, face_controlnet=SD15_RANDOM,
                              face_controlnet_subfolder="", ip2p_controlnet=SD15_RANDOM if with_ip2p else "",
                              back_view_token_file="")
    device = torch.device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_models_dir() / "tokenizer")
    names = ("unet", "controlnet", "vae", "text_encoder")
    cast = None if dtype == torch.float32 else dtype  # the modules are built in float32
    with torch.random.fork_rng(devices=[]):  # random weights, the caller's random stream untouched
        torch.manual_seed(0)
        modules = build_sd15_modules(names, device=device, dtype=cast)
        ip2p = build_sd15_modules(("controlnet",), device=device, dtype=cast)["controlnet"] if with_ip2p else None
    return assemble_models(cfg, device, dtype, tokenizer=tokenizer, scheduler=DDPMScheduler(**SD15_SCHEDULER),
                           text_encoder=modules["text_encoder"], unet=modules["unet"], vae=modules["vae"],
                           face=modules["controlnet"], ip2p=ip2p)
