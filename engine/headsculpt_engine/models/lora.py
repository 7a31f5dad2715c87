"""Style LoRAs in the UNet (StyleAvatar3D's stylised avatars), loaded by diffusers' own LoRA code.

A LoRA is a safetensors file (never a pickle), a folder holding `pytorch_lora_weights.safetensors`
(diffusers' convention), or a Hub id whose repository has that file at its root; Hub ids resolve
through the same cache and download code as the models. Before anything is loaded the file is checked
against the UNet: every UNet key must name a layer of this UNet with matching shapes, so that a LoRA
made for another architecture (SDXL, SD 2.x) gets a sentence instead of a half-applied style.
Only the UNet's part is loaded; text-encoder parts of a LoRA file are left out (docs/models.md).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import InputError, ModelNotFoundError

if TYPE_CHECKING:
    import torch

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
UNET_PREFIX = "unet."
# The LoRA matrices' names in peft's spelling, to which diffusers converts every format it reads.
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B)(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoadedLora:
    """One LoRA in the UNet, as the run record names it."""

    source: str  # what the user gave: a file, a folder or a Hub id
    file: str  # the safetensors file read
    sha256: str
    scale: float

    def record(self) -> dict[str, object]:
        return {"source": self.source, "file": self.file, "sha256": self.sha256, "scale": self.scale}


def lora_file(source: str, allow_download: bool, hub_only: bool = False) -> Path:
    """The safetensors file a `--lora` value names (a Hub id is fetched into the cache if allowed).
    `hub_only`: `source` is a Hub id whatever files exist (the server never reads a client-named path)."""
    from .download import ModelSpec, Part, cached_path, fetch_missing, is_hub_id

    if not hub_only and not is_hub_id(source):
        path = Path(source).expanduser()
        path = path / LORA_WEIGHTS if path.is_dir() else path
        if not path.is_file():
            raise InputError(f"The LoRA {source} does not exist: pass a .safetensors file, a folder with "
                             f"{LORA_WEIGHTS}, or a Hugging Face id.")
        if path.suffix != ".safetensors":
            raise InputError(f"The LoRA {source} is not a .safetensors file; the engine reads LoRAs only in that "
                             "format (never pickled .bin or .ckpt files).")
        return path.resolve()
    if allow_download:
        from .download_progress import TerminalProgress

        fetch_missing([ModelSpec(source, (Part("", required=(LORA_WEIGHTS,)),))], TerminalProgress())
    found = cached_path(source, LORA_WEIGHTS)
    if found is None:
        raise ModelNotFoundError(f"The LoRA {source} is not in the local Hugging Face cache (a repository with "
                                 f"{LORA_WEIGHTS}), and this run may not download it: get it with a run that may "
                                 "download, or pass the file.")
    return Path(found)


def read_lora(path: Path, source: str) -> tuple[dict[str, "torch.Tensor"], dict[str, float] | None]:
    """The LoRA's tensors in diffusers' naming (kohya/A1111 files converted by diffusers, their
    per-layer alphas returned beside them)."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    try:
        state, alphas = StableDiffusionPipeline.lora_state_dict(load_file(str(path)))
    except Exception as error:  # safetensors and diffusers raise several kinds for a damaged file
        raise InputError(f"The LoRA {source} could not be read as LoRA weights ({type(error).__name__}); "
                         "pass a LoRA .safetensors file made for Stable Diffusion 1.5.") from error
    return state, alphas


def check_fits(unet, lora: dict[str, "torch.Tensor"], source: str) -> None:
    """Refuse a LoRA whose UNet keys name no layer of this UNet, or whose matrices have other shapes.
    The keys are read as `load_lora_adapter` reads them: converted to peft's names by diffusers (a kohya
    file comes out of `lora_state_dict` in the attention processors' old names, `attn1.processor.to_k_lora`)."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    state = {key[len(UNET_PREFIX):]: value for key, value in lora.items() if key.startswith(UNET_PREFIX)}
    state = convert_unet_state_dict_to_peft(state) if state else state
    if not state:
        raise InputError(f"The LoRA {source} has no UNet weights: it is not a style LoRA for this model.")
    layers = dict(unet.named_modules())
    for key, tensor in state.items():
        match = _LORA_KEY.match(key)
        layer = layers.get(match["module"]) if match else None
        if layer is None or not hasattr(layer, "weight"):
            raise InputError(f"The LoRA {source} is for another architecture: its layer {key} is not in this UNet "
                             f"({type(unet).__name__}); pass a LoRA made for the base model of this run.")
        down = match["kind"] == "lora_A"
        expected, got = (layer.weight.shape[1], tensor.shape[1]) if down else (layer.weight.shape[0], tensor.shape[0])
        if expected != got:
            raise InputError(f"The LoRA {source} is for another architecture: its layer {match['module']} has "
                             f"{got} features where this UNet has {expected}; pass a LoRA made for the base model "
                             "of this run.")


def apply_loras(unet, sources: Sequence[str], scales: Sequence[float], allow_download: bool) -> list[LoadedLora]:
    """Load each LoRA into `unet` as its own adapter (diffusers' load_lora_adapter) and weight them
    with their scales (set_adapters); all are checked before the first is loaded."""
    if not sources:
        return []
    if len(scales) != len(sources):
        raise InputError(f"{len(sources)} LoRA(s) and {len(scales)} scale(s): give each LoRA one scale.")
    files = [lora_file(source, allow_download) for source in sources]
    loras = [read_lora(path, source) for path, source in zip(files, sources)]
    for (state, _), source in zip(loras, sources):
        check_fits(unet, state, source)
    names = [f"style{index}" for index in range(len(sources))]
    for (state, alphas), name in zip(loras, names):
        unet.load_lora_adapter(state, network_alphas=alphas, adapter_name=name, prefix="unet")
    unet.set_adapters(names, weights=[float(s) for s in scales])
    unet.requires_grad_(False)
    return [LoadedLora(source, str(path), sha256_file(path), float(scale))
            for source, path, scale in zip(sources, files, scales)]


def sha256_file(path: Path) -> str:
    """The file's sha256, as run records name LoRAs and image prompts."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_tiny_lora(unet, out_dir: Path, seed: int = 0) -> Path:
    """A LoRA for the tiny UNet made with peft (random, non-zero B so it changes the prediction),
    saved as diffusers' training scripts save one: `pytorch_lora_weights.safetensors`.
    `unet` gets the adapter while this runs and loses it after."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed + 6)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    unet.add_adapter(config, adapter_name="tiny")
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name="tiny"))
    StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=layers, safe_serialization=True)
    unet.delete_adapters("tiny")
    return out_dir / LORA_WEIGHTS
