"""A tiny random-weight CLIP (text and vision towers) in the real Hugging Face layout, for the `eval`
tests: loaded by the same `from_pretrained` calls as `openai/clip-vit-large-patch14`."""
from __future__ import annotations

from pathlib import Path

from .tiny_tokenizer import MAX_TOKENS, write_tokenizer

CLIP_DIR = "clip"  # inside a tiny-models folder
IMAGE_SIZE = 32


def is_tiny_clip_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "preprocessor_config.json").is_file()


def make_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny CLIP to `out_dir`: model weights, tokenizer and image processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from ..quiet import quiet_model_libraries

    quiet_model_libraries()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(out_dir)
    towers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=MAX_TOKENS,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"], **towers),
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=8, **towers), projection_dim=16)
    torch.manual_seed(seed + 5)
    CLIPModel(config).save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                       crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(out_dir)
    return out_dir
