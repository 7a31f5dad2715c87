"""Tiny random-weight diffusion models in the real diffusers layout, for tests and CPU smoke runs.

The folder holds a Stable-Diffusion-style pipeline (unet/, vae/, text_encoder/, tokenizer/,
scheduler/, model_index.json) plus the two ControlNets laid out as their Hugging Face repositories
are: the face-landmark ControlNet in `face-controlnet/diffusion_sd15/` (as
CrucibleAI/ControlNetMediaPipeFace) and the InstructPix2Pix ControlNet in `ip2p-controlnet/`; a
style LoRA in `lora/` and an IP-Adapter with its image encoder in `ip-adapter/` (as h94/IP-Adapter).
The loader reads them with the same calls as the real ids.

The VAE and the ControlNet conditioning embedding both downsample by `DOWNSAMPLE` (2), so a control
image drawn at the guidance resolution matches the latents the VAE makes from a render of that size.
"""
from __future__ import annotations

import json
from pathlib import Path

from .ip_adapter import make_tiny_ip_adapter
from .lora import make_tiny_lora
from .tiny_clip import CLIP_DIR, make_tiny_clip
from .tiny_tokenizer import MAX_TOKENS, write_tokenizer

# Folder names inside a tiny-models folder (also used to recognise one).
FACE_CONTROLNET_DIR = "face-controlnet"
FACE_CONTROLNET_SUBFOLDER = "diffusion_sd15"
IP2P_CONTROLNET_DIR = "ip2p-controlnet"
TINY_LORA_DIR = "lora"  # pytorch_lora_weights.safetensors for the tiny UNet
IP_ADAPTER_DIR = "ip-adapter"  # laid out as h94/IP-Adapter

DOWNSAMPLE = 2
_WIDTHS = (16, 32)  # block channels of the UNet, ControlNet and VAE: two levels = one 2x downsampling
_TEXT_DIM = 32


def is_tiny_models_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file() and (path / FACE_CONTROLNET_DIR).is_dir()


def make_tiny_models(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny models to `out_dir` (created); the same seed gives the same bytes."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..quiet import quiet_model_libraries

    quiet_model_libraries()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(out_dir / "tokenizer")

    blocks = dict(block_out_channels=_WIDTHS, layers_per_block=1, norm_num_groups=8,
                  cross_attention_dim=_TEXT_DIM, attention_head_dim=4)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, **blocks,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    controlnets = {}
    for name in ("face", "ip2p"):
        torch.manual_seed(seed + (1 if name == "face" else 2))
        controlnets[name] = ControlNetModel(
            in_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), **blocks,
            conditioning_embedding_out_channels=(8, 16))  # two levels = 2x, as the VAE
        _wake_zero_convs(controlnets[name], seed)
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=_WIDTHS, layers_per_block=1,
        norm_num_groups=8, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    _make_encoder_recoverable(vae, seed)
    _calibrate_latent_scale(vae, seed)
    torch.manual_seed(seed + 4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=_TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    # Stable Diffusion's training schedule: 1000 steps of scaled_linear betas 0.00085 .. 0.012.
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)

    unet.save_pretrained(out_dir / "unet")
    vae.save_pretrained(out_dir / "vae")
    text_encoder.save_pretrained(out_dir / "text_encoder")
    scheduler.save_pretrained(out_dir / "scheduler")
    controlnets["face"].save_pretrained(out_dir / FACE_CONTROLNET_DIR / FACE_CONTROLNET_SUBFOLDER)
    controlnets["ip2p"].save_pretrained(out_dir / IP2P_CONTROLNET_DIR)
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out_dir / "model_index.json").write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")
    make_tiny_clip(out_dir / CLIP_DIR, seed)  # for `headsculpt eval`
    make_tiny_lora(unet, out_dir / TINY_LORA_DIR, seed)  # a style LoRA (`--lora`)
    make_tiny_ip_adapter(unet, out_dir / IP_ADAPTER_DIR, seed)  # an image prompt (`--image`)
    return out_dir


def _wake_zero_convs(controlnet, seed: int) -> None:
    """A fresh ControlNet's output convolutions are zero, so its residuals would be zero and a test
    could not tell whether they are applied; give them small random weights instead."""
    import torch

    gen = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.05)
        last = controlnet.controlnet_cond_embedding.conv_out
        last.weight.copy_(torch.randn(last.weight.shape, generator=gen) * 0.05)


def _make_encoder_recoverable(vae, seed: int) -> None:
    """Give the tiny VAE's encoder a structure under which a render stays recoverable from its latents.

    A random encoder loses most of the image (its latents match for images far apart), so score
    distillation through it could not pull renders to a target. Here each 2x2 block's mean colour is
    carried injectively into the block's 4 latent channels, as a real VAE keeps low frequencies:
    residual branches and attention are silenced, the downsampling averages 2x2 blocks, and the
    channel mixings are random matrices on the block's features (so the weights still come from the seed).
    """
    import torch

    enc = vae.encoder
    gen = torch.Generator().manual_seed(seed + 20)
    width_in, width_out = _WIDTHS
    with torch.no_grad():
        for name, module in enc.named_modules():
            if name.endswith(("conv2", "to_out.0")):
                module.weight.zero_()
                module.bias.zero_()

        def centre_only(conv, matrix, bias=None):
            conv.weight.zero_()
            conv.weight[:, :, conv.weight.shape[2] // 2, conv.weight.shape[3] // 2] = matrix
            if bias is not None:
                conv.bias.copy_(bias)

        # RGB -> features: each feature one colour channel with its own gain, offsets spread out so
        # that the group norms' statistics hardly depend on the image.
        rgb = torch.zeros(width_in, 3)
        rgb[torch.arange(width_in), torch.arange(width_in) % 3] = 1.0 + 0.5 * torch.rand(width_in, generator=gen)
        centre_only(enc.conv_in, rgb, torch.linspace(-1.0, 1.0, width_in))
        down = enc.down_blocks[0].downsamplers[0].conv  # padded (0, 1, 0, 1), stride 2: taps 0..1 x 0..1
        down.weight.zero_()
        down.weight[torch.arange(width_in), torch.arange(width_in), :2, :2] = 0.25
        down.bias.zero_()
        shortcut = enc.down_blocks[1].resnets[0].conv_shortcut  # width_in -> width_out, 1x1
        q, _ = torch.linalg.qr(torch.randn(width_out, width_in, generator=gen))
        shortcut.weight.copy_(q.view(width_out, width_in, 1, 1))
        shortcut.bias.zero_()
        mix = torch.randn(2 * vae.config.latent_channels, width_out, generator=gen) / width_out ** 0.5
        centre_only(enc.conv_out, mix, torch.zeros(2 * vae.config.latent_channels))
        vae.quant_conv.weight.copy_(torch.eye(2 * vae.config.latent_channels).view(*vae.quant_conv.weight.shape))
        vae.quant_conv.bias.zero_()


def _calibrate_latent_scale(vae, seed: int) -> None:
    """Set the VAE's scaling factor so that scaled latents have unit standard deviation, the rule by
    which Stable Diffusion's 0.18215 was chosen (rounded, so that the config is the same everywhere)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed + 30)
    images = F.interpolate(torch.rand(8, 3, 8, 8, generator=gen), size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        latents = vae.encode(images * 2.0 - 1.0).latent_dist.mean
    vae.register_to_config(scaling_factor=round(1.0 / float(latents.std()), 3))
