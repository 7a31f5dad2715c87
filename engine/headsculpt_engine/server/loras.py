"""Style LoRAs uploaded to the engine (POST /v1/loras), and the file a job's LoRA id names.

The body is the LoRA file's own bytes, streamed to a staging file in `DATA/loras/` (never held in
memory whole: a LoRA is tens to hundreds of MB). Only the safetensors header is read to check it (the
safetensors library: no pickle, and the tensors' offsets must cover the file exactly), and its tensor
names must be a LoRA's; then it is stored as `<sha256>.safetensors`, and jobs name it `upload:<sha256>`.
The request's size is capped by the server's body limit (app.py, `--lora-max-mb`), and the uploads
together by `--lora-cache-mb`: beyond it the least recently used go (uploaded again, or named by a job,
counts as used), never one that a queued or running job names.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import AsyncIterable, Callable

from ..errors import InputError
from .blobs import BlobFolder

UPLOAD_PREFIX = "upload:"
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_CACHE_BYTES = 4096 * 1024 * 1024
log = logging.getLogger("headsculpt.server")
# LoRA matrices as peft, diffusers (old and new) and kohya/A1111 name them.
_LORA_MATRIX = re.compile(r"lora(?:_linear_layer)?[._](?:A|B|down|up)\b")


class BadLora(Exception):
    """The upload is not a LoRA safetensors file; the message says why."""


class LoraStore:
    def __init__(self, data_dir: Path, max_bytes: int = DEFAULT_CACHE_BYTES,
                 in_use: Callable[[], set[str]] = set):
        self.blobs = BlobFolder(Path(data_dir) / "loras", ".safetensors")
        self.max_bytes, self.in_use = max_bytes, in_use  # in_use: the LoRA ids queued or running jobs name

    async def add(self, chunks: AsyncIterable[bytes]) -> dict[str, int | str]:
        """Receive, check and store one LoRA file; its id and size in bytes."""
        with self.blobs.staging() as staged:
            async for chunk in chunks:
                staged.write(chunk)
            staged.close()
            check_lora_header(staged.path)
            blob_id = self.blobs.keep(staged)
        needed = {lora_id[len(UPLOAD_PREFIX):] for lora_id in self.in_use() if lora_id.startswith(UPLOAD_PREFIX)}
        for evicted in self.blobs.evict(self.max_bytes, keep=needed | {blob_id}):
            log.info("LoRA upload:%s evicted: the uploaded LoRAs exceed --lora-cache-mb", evicted)
        return {"lora_id": UPLOAD_PREFIX + blob_id, "size": staged.size}

    def touch(self, lora_id: str) -> None:
        """A job names this LoRA: it counts as used now."""
        if lora_id.startswith(UPLOAD_PREFIX):
            self.blobs.touch(lora_id[len(UPLOAD_PREFIX):])

    def path(self, lora_id: str) -> Path | None:
        """The stored file of an `upload:<sha256>` id, or None."""
        if not lora_id.startswith(UPLOAD_PREFIX):
            return None
        return self.blobs.path(lora_id[len(UPLOAD_PREFIX):])


def check_lora_header(path: Path) -> None:
    """Refuse anything but a safetensors file holding LoRA matrices; reads the header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as lora:
            shapes = [lora.get_slice(name).get_shape() for name in lora.keys() if _LORA_MATRIX.search(name)]
    except (SafetensorError, OSError):
        raise BadLora("The upload is not a safetensors file; send the LoRA's .safetensors file (pickled .bin, "
                      ".ckpt or .pt files are not taken).") from None
    if not any(len(shape) in (2, 4) for shape in shapes):
        raise BadLora("The safetensors file holds no LoRA matrices (tensors named lora_A/lora_B or "
                      "lora_down/lora_up); send a style LoRA made for Stable Diffusion 1.5.")


def lora_path(data_dir: Path, lora_id: str) -> Path:
    """The file a job's LoRA id names: an upload in the data folder, or a Hub id's file in the engine's
    model cache (never downloaded, never a path the client names)."""
    from ..models.lora import lora_file

    if lora_id.startswith(UPLOAD_PREFIX):
        path = LoraStore(data_dir).path(lora_id)
        if path is None:
            raise InputError(f"Unknown LoRA {lora_id!r}: upload the file first (POST /v1/loras).")
        return path
    return lora_file(lora_id, allow_download=False, hub_only=True)
