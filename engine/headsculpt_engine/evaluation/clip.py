"""CLIP for the metrics, loaded like the diffusion models: by Hugging Face id from the local cache (or a
folder), offline unless downloads are allowed, with the same missing-model sentence."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DEFAULT_CLIP_MODEL as DEFAULT_CLIP

TINY = "tiny"


@dataclass
class Clip:
    """A CLIP model with its tokenizer and image processor; embeddings come back L2-normalised."""

    model: Any  # transformers CLIPModel
    tokenizer: Any  # transformers CLIPTokenizer
    processor: Any  # transformers CLIPImageProcessor
    name: str

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt",
                                max_length=self.tokenizer.model_max_length)
        with torch.no_grad():
            features = self.model.get_text_features(input_ids=tokens["input_ids"],
                                                    attention_mask=tokens.get("attention_mask"))
        return _normalised(_tensor(features))

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 images (H, W, 3)."""
        import torch

        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            features = self.model.get_image_features(pixel_values=pixels)
        return _normalised(_tensor(features))


def _tensor(features: Any):
    """transformers 5 may return a model output whose pooled projection is the features."""
    return getattr(features, "pooler_output", features)


def _normalised(features) -> np.ndarray:
    rows = features.float().numpy().astype(np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True).clip(min=1e-12)


def resolve_clip_source(name: str) -> str:
    """`tiny` is the project's tiny CLIP (written on first use beside the tiny diffusion models)."""
    if name != TINY:
        return name
    from ..models.loading import tiny_models_dir
    from ..models.tiny_clip import CLIP_DIR, is_tiny_clip_dir, make_tiny_clip

    folder = tiny_models_dir() / CLIP_DIR
    if not is_tiny_clip_dir(folder):
        make_tiny_clip(folder)
    return str(folder)


def _image_processor_class():
    """The PIL image processor: transformers 5's default one needs torchvision, which the engine lacks."""
    try:
        from transformers import CLIPImageProcessorPil
    except ImportError:  # transformers 4.x: the default processor is the PIL one
        from transformers import CLIPImageProcessor as CLIPImageProcessorPil
    return CLIPImageProcessorPil


def load_clip(name: str = DEFAULT_CLIP, allow_download: bool = False) -> Clip:
    from transformers import CLIPModel, CLIPTokenizer

    from ..models.loading import from_pretrained_offline
    from ..quiet import quiet_model_libraries

    quiet_model_libraries()
    source = resolve_clip_source(name)
    model = from_pretrained_offline(CLIPModel, source, "", allow_download).eval()
    tokenizer = from_pretrained_offline(CLIPTokenizer, source, "", allow_download)
    processor = from_pretrained_offline(_image_processor_class(), source, "", allow_download)
    return Clip(model=model, tokenizer=tokenizer, processor=processor, name=name)
