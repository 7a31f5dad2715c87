"""Load the diffusion models by Hugging Face id or from a local folder, offline unless allowed.

Real ids and the tiny models go through the same `from_pretrained` calls: `--models tiny` is only a
folder in the engine cache, written once by `make_tiny_models`.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelsConfig
from ..errors import InputError, ModelNotFoundError
from .tiny import (FACE_CONTROLNET_DIR, FACE_CONTROLNET_SUBFOLDER, IP2P_CONTROLNET_DIR, IP_ADAPTER_DIR,
                   is_tiny_models_dir)

if TYPE_CHECKING:
    import torch

    from .lora import LoadedLora
    from .text import PromptEncoder

TINY = "tiny"
# The SD 1.5 architectures with random weights: for `headsculpt bench` only (models/sd15_random.py).
SD15_RANDOM = "sd15-random"


@dataclass
class DiffusionModels:
    """Everything a guidance needs; models are in eval mode with frozen weights."""

    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    scheduler: Any  # diffusers DDPMScheduler (its alphas_cumprod define the noise schedule)
    face_controlnet: Any  # diffusers ControlNetModel for MediaPipe face-landmark maps
    ip2p_controlnet: Any | None  # diffusers ControlNetModel for InstructPix2Pix (editing only)
    prompts: "PromptEncoder"
    device: "torch.device"
    dtype: "torch.dtype"
    config: ModelsConfig
    loras: "tuple[LoadedLora, ...]" = ()  # style LoRAs in the UNet (models/lora.py)
    image_encoder: Any | None = None  # CLIPVisionModelWithProjection of the IP-Adapter (image prompts only)
    image_processor: Any | None = None  # its CLIPImageProcessor

    @property
    def alphas_cumprod(self) -> "torch.Tensor":
        return self.scheduler.alphas_cumprod.float()


def tiny_models_dir() -> Path:
    """The engine's own tiny models, written on first use into the cache."""
    import shutil
    import tempfile

    from ..paths import cache_dir
    from .tiny import make_tiny_models

    folder = cache_dir() / "tiny-models"
    if not is_tiny_models_dir(folder):
        # Written aside and renamed into place, so that a half-written folder is never taken for a
        # finished one, and two processes making them at once do not collide.
        staging = Path(tempfile.mkdtemp(prefix="tiny-models.", dir=folder.parent))
        make_tiny_models(staging)
        try:
            staging.rename(folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not is_tiny_models_dir(folder):
                raise
    return folder


def models_config_from_cli(value: str, base: ModelsConfig | None = None) -> ModelsConfig:
    """The `--models` option: "tiny", "default" (the papers' ids), or a folder in the
    make-tiny-models layout (a pipeline folder with `face-controlnet/` and `ip2p-controlnet/`)."""
    cfg = dataclasses.replace(base or ModelsConfig())
    if value == "default":
        defaults = ModelsConfig()
        cfg.base, cfg.face_controlnet = defaults.base, defaults.face_controlnet
        cfg.face_controlnet_subfolder, cfg.ip2p_controlnet = defaults.face_controlnet_subfolder, defaults.ip2p_controlnet
        return cfg
    if value == TINY:
        cfg.base = TINY
        return cfg
    if value == SD15_RANDOM:
        raise _random_weights_refused()
    folder = Path(value).expanduser()
    if not is_tiny_models_dir(folder):
        raise InputError(f"--models {value!r} is neither 'tiny', 'default' nor a models folder with "
                         f"model_index.json and {FACE_CONTROLNET_DIR}/: pass one of those.")
    return _folder_config(cfg, folder.resolve())


def _random_weights_refused() -> InputError:
    return InputError(f"The '{SD15_RANDOM}' models have random weights and would make only noise: only "
                      f"`headsculpt bench` accepts them; pass 'default', 'tiny' or a models folder.")


def resolve_models_config(cfg: ModelsConfig) -> ModelsConfig:
    """`base = "tiny"` (or a tiny-layout folder) stands for the whole set; spell out its parts."""
    if cfg.base == SD15_RANDOM:
        raise _random_weights_refused()
    if cfg.base == TINY:
        return _folder_config(cfg, tiny_models_dir())
    return cfg


def _folder_config(cfg: ModelsConfig, folder: Path) -> ModelsConfig:
    return dataclasses.replace(cfg, base=str(folder), face_controlnet=str(folder / FACE_CONTROLNET_DIR),
                               face_controlnet_subfolder=FACE_CONTROLNET_SUBFOLDER,
                               ip2p_controlnet=str(folder / IP2P_CONTROLNET_DIR),
                               ip_adapter=str(folder / IP_ADAPTER_DIR))


def resolve_dtype(name: str, device: "torch.device") -> "torch.dtype":
    """auto: fp16 on CUDA, fp32 elsewhere (CPU kernels for half precision are slow or missing)."""
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def load_diffusion_models(cfg: ModelsConfig, device: "torch.device | str", with_ip2p: bool = False,
                          with_face: bool = True, with_image_prompt: bool = False) -> DiffusionModels:
    """Load the base model's parts and the ControlNets (the IP2P one only for editing; the face one
    unless the run has no landmark control, `with_face=False`: face_controlnet is then None), the
    style LoRAs into the UNet, and the IP-Adapter when a run has an image prompt."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..quiet import quiet_model_libraries
    from .ip_adapter import load_ip_adapter
    from .lora import apply_loras

    quiet_model_libraries()
    cfg = resolve_models_config(cfg)
    if with_image_prompt and cfg.attention_slicing:
        # diffusers' attention slicing replaces every attention processor, the IP-Adapter's included.
        raise InputError("An image prompt cannot run with attention slicing (models.attention_slicing): the "
                         "slicing would drop the IP-Adapter's attention; turn one of them off.")
    device = torch.device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.allow_download:
        # Fetch what the cache lacks first (sizes shown), then load from the cache alone.
        from .download import fetch_missing, model_specs
        from .download_progress import TerminalProgress

        fetch_missing(model_specs(cfg, with_ip2p, with_face, with_image_prompt), TerminalProgress())

    def load(cls, name: str, subfolder: str = "", **kwargs):
        return from_pretrained_offline(cls, name, subfolder, False, **kwargs)

    tokenizer = load(CLIPTokenizer, cfg.base, "tokenizer")
    scheduler = load(DDPMScheduler, cfg.base, "scheduler")
    text_encoder = load(CLIPTextModel, cfg.base, "text_encoder", dtype=dtype)
    unet = load(UNet2DConditionModel, cfg.base, "unet", torch_dtype=dtype)
    vae = load(AutoencoderKL, cfg.base, "vae", torch_dtype=dtype)
    face = load(ControlNetModel, cfg.face_controlnet, cfg.face_controlnet_subfolder, torch_dtype=dtype) \
        if with_face else None
    ip2p = load(ControlNetModel, cfg.ip2p_controlnet, "", torch_dtype=dtype) if with_ip2p else None
    loras = apply_loras(unet, cfg.loras, cfg.lora_scales, cfg.allow_download)
    encoder, processor = None, None
    if with_image_prompt:
        encoder, processor = load_ip_adapter(cfg.ip_adapter, unet=unet, vae=vae, text_encoder=text_encoder,
                                             tokenizer=tokenizer, scheduler=scheduler)

    models = assemble_models(cfg, device, dtype, tokenizer=tokenizer, scheduler=scheduler,
                             text_encoder=text_encoder, unet=unet, vae=vae, face=face, ip2p=ip2p)
    if encoder is not None:
        encoder.to(device)
    return dataclasses.replace(models, loras=tuple(loras), image_encoder=encoder, image_processor=processor)


def assemble_models(cfg: ModelsConfig, device: "torch.device", dtype: "torch.dtype", *, tokenizer, scheduler,
                    text_encoder, unet, vae, face, ip2p) -> DiffusionModels:
    """Freeze the modules, apply the memory and speed options of `cfg`, place them on `device`."""
    import torch

    from .text import PromptEncoder

    modules = [m for m in (text_encoder, unet, vae, face, ip2p) if m is not None]
    for module in modules:
        module.eval().requires_grad_(False)
    controlled = [m for m in (unet, face, ip2p) if m is not None]
    if cfg.attention_slicing:
        for module in controlled:
            module.set_attention_slice("auto")
    if cfg.cpu_offload and device.type == "cuda":
        _enable_cpu_offload(modules, device)
    else:
        # Offloading only helps when the accelerator's memory is short; on the CPU it is a no-op.
        for module in modules:
            module.to(device)
    if cfg.channels_last and device.type == "cuda":
        for module in controlled:
            module.to(memory_format=torch.channels_last)
    if cfg.compile:
        # In place (each module keeps its type, config and dtype): the UNet, the ControlNets and the
        # VAE's encoder, whose forward and backward at 512x512 are about half of a step's arithmetic.
        for module in (*controlled, vae.encoder):
            module.compile()
    prompts = PromptEncoder(tokenizer, text_encoder, device)
    if cfg.back_view_token_file:
        prompts.load_back_view_token(Path(cfg.back_view_token_file), cfg.back_view_token)
    return DiffusionModels(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                           scheduler=scheduler, face_controlnet=face, ip2p_controlnet=ip2p, prompts=prompts,
                           device=device, dtype=dtype, config=cfg)


def _enable_cpu_offload(modules: list, device: "torch.device") -> None:
    """Keep each model in CPU memory and move it to the GPU only while it runs (accelerate hooks)."""
    from accelerate import cpu_offload_with_hook

    hook = None
    for module in modules:
        _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)


def from_pretrained_offline(cls, name: str, subfolder: str, allow_download: bool, **kwargs):
    """`cls.from_pretrained` from a folder or a hub id, turning "not there" into ModelNotFoundError.

    Weights load from safetensors only, in the variant the folder or cache holds: the fp16 files that
    `headsculpt download-models` fetches, or full-precision ones (preferred when computing in fp32).
    """
    import torch

    from .download import is_hub_id, local_variant

    where = f"{name}" + (f" (subfolder {subfolder})" if subfolder else "")
    path = Path(name).expanduser()
    local = not is_hub_id(name)
    if local:
        if not (path / subfolder).is_dir():
            raise ModelNotFoundError(f"The model folder {path / subfolder} does not exist: pass the folder "
                                     f"that holds the model, or a Hugging Face id.")
        source = str(path)
    else:
        source = name
    extra = {"subfolder": subfolder} if subfolder else {}
    stem = _weights_stem(cls)
    if stem:
        half = kwargs.get("torch_dtype", kwargs.get("dtype")) == torch.float16
        extra.update(use_safetensors=True, variant=local_variant(source, subfolder, stem, prefer_half=half))
    try:
        if not allow_download:
            _check_tokenizer_files(cls, source, subfolder)
        with warnings.catch_warnings():
            # diffusers still passes a huggingface_hub argument that is deprecated: noise for the user.
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            return cls.from_pretrained(source, local_files_only=not allow_download, **extra, **kwargs)
    except (OSError, ValueError) as error:
        if local:
            raise ModelNotFoundError(f"Could not load the model {where} from its folder ({error}).") from error
        if allow_download:
            raise ModelNotFoundError(f"Could not download the model {where} ({error}); check the id and "
                                     f"your connection, or download it yourself.") from error
        raise ModelNotFoundError(
            f"The model {where} is not in the local Hugging Face cache, and this run may not download it "
            f"(--offline, HF_HUB_OFFLINE=1, or a job on the engine server): get it with "
            f"`headsculpt download-models --models {name}`, or pass a local folder.") from error


def _check_tokenizer_files(cls, source: str, subfolder: str) -> None:
    """transformers 5 builds an empty tokenizer, without a word, when a CLIP tokenizer's files are
    missing: prompts would all encode to the same tokens. Missing files are an error here."""
    from transformers import PreTrainedTokenizerBase

    from .download import CLIP_TOKENIZER_FILES, is_present

    if issubclass(cls, PreTrainedTokenizerBase):
        missing = [name for name in CLIP_TOKENIZER_FILES if not is_present(source, f"{subfolder}/{name}".lstrip("/"))]
        if missing:
            raise FileNotFoundError(f"no {' or '.join(missing)}")


def _weights_stem(cls) -> str:
    """The weights file stem of a model class ("" for tokenizers and schedulers, which have none)."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    from .download import DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS

    if issubclass(cls, ModelMixin):
        return DIFFUSERS_WEIGHTS
    if issubclass(cls, PreTrainedModel):
        return TRANSFORMERS_WEIGHTS
    return ""
