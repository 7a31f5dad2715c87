"""Which base model an SSD run uses: HeadArtist's SD 2.1-base when the user kept the default base and
it is in the local Hugging Face cache, else the configured base with a sentence saying why."""
from __future__ import annotations

import dataclasses
from typing import Callable

from ..config import DEFAULT_BASE_MODEL, ModelsConfig

CONFIG_FILES = {"base": "model_index.json", "controlnet": "config.json"}


def in_hf_cache(repo: str, filename: str) -> bool:
    """Whether `filename` of the Hugging Face repository `repo` is in the local cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename), str)


def ssd_models(models: ModelsConfig, kind: str,
               cached: Callable[[str, str], bool] = in_hf_cache) -> tuple[ModelsConfig, str | None]:
    """The models an SSD run loads, and a note for the user when HeadArtist's base is not used."""
    if kind != "ssd" or not models.ssd_base or models.base != DEFAULT_BASE_MODEL:
        return models, None
    if cached(models.ssd_base, CONFIG_FILES["base"]) and cached(models.face_controlnet, CONFIG_FILES["controlnet"]):
        return dataclasses.replace(models, base=models.ssd_base, face_controlnet_subfolder=""), None
    return models, (f"HeadArtist's SSD uses {models.ssd_base} with the face ControlNet's SD 2.1 weights, which are "
                    f"not in the local model cache, so this run uses {models.base}. For the paper's setting, get "
                    f"them with `headsculpt download-models --models {models.ssd_base}` and `hf download "
                    f"{models.face_controlnet} config.json diffusion_pytorch_model.safetensors` (the repository's "
                    f"root holds the SD 2.1 weights), or set models.ssd_base= to keep {models.base} without this "
                    "note.")
