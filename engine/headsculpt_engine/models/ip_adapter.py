"""IP-Adapter (an image as prompt, StyleAvatar3D's image-guided generation) by diffusers' own loading.

The weights and the image encoder are laid out as the h94/IP-Adapter repository has them:
`models/ip-adapter_sd15.safetensors` (keys `image_proj.*` and `ip_adapter.*`) and
`models/image_encoder/` (a CLIPVisionModelWithProjection); the tiny models mirror that layout.
diffusers' pipeline mixin `load_ip_adapter` puts the adapter's attention processors and image
projection into the UNet, loads the image encoder and makes its image processor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError

IP_ADAPTER_FOLDER = "models"
IP_ADAPTER_WEIGHTS = "ip-adapter_sd15.safetensors"
IMAGE_ENCODER_FOLDER = "image_encoder"  # inside IP_ADAPTER_FOLDER
IP_ADAPTER_TOKENS = 4  # image tokens of the plain (non-"plus") IP-Adapter's projection


def load_ip_adapter(source: str, *, unet, vae, text_encoder, tokenizer, scheduler) -> tuple[Any, Any]:
    """Put the IP-Adapter of `source` (a folder or a Hub id in the cache) into `unet`; return its
    image encoder and image processor. The pipeline object only carries the parts for the mixin."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    try:
        pipe.load_ip_adapter(source, subfolder=IP_ADAPTER_FOLDER, weight_name=IP_ADAPTER_WEIGHTS,
                             image_encoder_folder=IMAGE_ENCODER_FOLDER, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:  # RuntimeError: shapes of another model
        raise ModelNotFoundError(
            f"Could not load the IP-Adapter for the image prompt from {source} ({type(error).__name__}): it needs "
            f"{IP_ADAPTER_FOLDER}/{IP_ADAPTER_WEIGHTS} and {IP_ADAPTER_FOLDER}/{IMAGE_ENCODER_FOLDER}/ in the cache "
            f"(`headsculpt download-models --models {source}`) or in that folder.") from error
    encoder = pipe.image_encoder.eval().requires_grad_(False)
    return encoder, pipe.feature_extractor


def make_tiny_ip_adapter(unet, out_dir: Path, seed: int = 0) -> Path:
    """A random IP-Adapter for `unet` and a tiny CLIP image encoder, in the h94/IP-Adapter layout.

    The keys follow the real file: `image_proj.proj` maps the encoder's projection to 4 tokens of the
    UNet's cross-attention width, and each cross-attention layer (in the UNet's processor order, odd
    numbers 1, 3, 5, ... as the original code counts self- and cross-attention together) has `to_k_ip` and `to_v_ip`."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .tiny_clip import IMAGE_SIZE

    folder = Path(out_dir) / IP_ADAPTER_FOLDER
    torch.manual_seed(seed + 7)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE_SIZE,
        patch_size=8, projection_dim=16))
    encoder.save_pretrained(folder / IMAGE_ENCODER_FOLDER)
    gen = torch.Generator().manual_seed(seed + 8)
    cross = unet.config.cross_attention_dim
    # Non-zero biases, as a trained adapter has: the zero embedding of unconditional rows then still
    # gives image tokens, as with the real weights.
    tensors = {"image_proj.proj.weight": torch.randn(IP_ADAPTER_TOKENS * cross, 16, generator=gen) * 0.2,
               "image_proj.proj.bias": torch.randn(IP_ADAPTER_TOKENS * cross, generator=gen) * 0.1,
               "image_proj.norm.weight": torch.ones(cross),
               "image_proj.norm.bias": torch.randn(cross, generator=gen) * 0.5}
    cross_layers = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    for index, name in zip(range(1, 2 * len(cross_layers), 2), cross_layers):
        width = unet.get_submodule(name[: -len(".processor")]).to_k.out_features
        for kind in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{index}.{kind}.weight"] = torch.randn(width, cross, generator=gen) * 0.2
    save_file(tensors, str(folder / IP_ADAPTER_WEIGHTS))
    return folder / IP_ADAPTER_WEIGHTS
