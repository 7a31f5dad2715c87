"""Test helper: a Hugging Face cache folder holding the tiny LoRA as a Hub repository, for servers that
take LoRAs by Hub id from their model cache only."""
from __future__ import annotations

import shutil
from pathlib import Path

from headsculpt_engine.models.loading import tiny_models_dir
from headsculpt_engine.models.lora import LORA_WEIGHTS
from headsculpt_engine.models.tiny import TINY_LORA_DIR

TINY_LORA_ID = "styles/tiny-cartoon"


def tiny_lora_cache(cache: Path, repo_id: str = TINY_LORA_ID) -> Path:
    """Lay the tiny LoRA out in `cache` as huggingface_hub would (refs/main -> snapshot); the file."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    shutil.copy(tiny_models_dir() / TINY_LORA_DIR / LORA_WEIGHTS, snapshot / LORA_WEIGHTS)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    return snapshot / LORA_WEIGHTS
