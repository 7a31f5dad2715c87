"""The real Stable Diffusion 1.5 architectures (UNet, VAE, CLIP text encoder, ControlNet) with random
weights, from their published configurations.

Speed does not depend on the weights, so `--models sd15-random` measures the real cost of a step
without downloading anything. The configurations are the ones published with the SD 1.5 and
ControlNet 1.1 checkpoints.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SD15_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
    flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, act_fn="silu",
)
SD15_CONTROLNET: dict[str, Any] = dict(
    in_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
    flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, act_fn="silu",
    conditioning_embedding_out_channels=(16, 32, 96, 256), controlnet_conditioning_channel_order="rgb",
)
SD15_VAE: dict[str, Any] = dict(
    sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, act_fn="silu", scaling_factor=0.18215,
)
SD15_TEXT_ENCODER: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
# Published parameter counts (millions), for the check that the architectures are the real ones.
SD15_PARAMETERS_M = {"unet": 859.5, "controlnet": 361.3, "vae": 83.7, "text_encoder": 123.1}


def build_sd15_modules(names=("unet", "controlnet", "vae", "text_encoder"), device: "torch.device | str" = "cpu",
                       dtype: "torch.dtype | None" = None) -> dict[str, "torch.nn.Module"]:
    """Instantiate the named SD 1.5 modules with random weights (on the `meta` device they cost no memory)."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    builders = {
        "unet": lambda: UNet2DConditionModel(**SD15_UNET),
        "controlnet": lambda: ControlNetModel(**SD15_CONTROLNET),
        "vae": lambda: AutoencoderKL(**SD15_VAE),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER)),
    }
    modules = {}
    with torch.device(device):
        for name in names:
            module = builders[name]().eval().requires_grad_(False)
            modules[name] = module.to(dtype) if dtype is not None else module
    return modules


def parameter_count_millions(module: "torch.nn.Module") -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6
