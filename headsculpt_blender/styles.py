"""The panel's style LoRA and image prompt as fields of a job request (StyleAvatar3D, issue 18).

The engine never reads a path on this computer (it may run elsewhere): a LoRA is a Hugging Face id
(owner/name) it reads from its own model cache, or a .safetensors file here that the job's work function
uploads (jobs.with_uploads); the image prompt is uploaded to it too, as the prior is.
"""
from __future__ import annotations

import re
from pathlib import Path

import bpy

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_IMAGE_BYTES = 32 * 1024 * 1024


class StyleRefusal(Exception):
    """A LoRA or image field the artist can fix; the message is shown as it is."""


def lora_fields(st, prefs) -> dict:
    """{"loras": [...]} for the panel's LoRA (or, when it is empty, the preferences' one); {} for none.
    A file is named {"file": path} until the work function uploads it and names the engine's id."""
    own = st.lora.strip()
    source, scale = (own, st.lora_scale) if own else (prefs.lora.strip(), prefs.lora_scale)
    if not source:
        return {}
    return {"loras": [{**lora_source(source), "scale": float(scale)}]}


def lora_source(source: str) -> dict:
    """{"id": ...} for a Hugging Face id, {"file": ...} for a LoRA file on this computer (checked here,
    so that nothing is sent for a wrong one)."""
    path = Path(bpy.path.abspath(source))
    if HUB_ID.match(source) and not source.lower().endswith(".safetensors") and not path.exists():
        return {"id": source}
    if not path.is_file():
        raise StyleRefusal(f"The style LoRA {source} is neither a .safetensors file on this computer nor a "
                           "Hugging Face id (owner/name): pick a LoRA file, or type the id of one in the "
                           "engine's model cache.")
    if path.suffix.lower() != ".safetensors":
        raise StyleRefusal(f"The style LoRA {path.name} is not a .safetensors file; the engine takes LoRA files "
                           "only in that format (never pickled .ckpt, .pt or .bin files).")
    return {"file": str(path)}


def style_fields(st, prefs) -> tuple[dict, bytes | None]:
    """The job fields of the LoRA and image scale, and the image's bytes for the upload (or None)."""
    image = image_bytes(st)
    return {**lora_fields(st, prefs), **({"image_scale": float(st.image_scale)} if image else {})}, image


def image_bytes(st) -> bytes | None:
    """The picked image prompt's file, read here (the engine gets its bytes); None without one."""
    if not st.image_path.strip():
        return None
    path = Path(bpy.path.abspath(st.image_path))
    if not path.is_file():
        raise StyleRefusal(f"The image prompt {path} does not exist: pick a PNG or JPEG file.")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise StyleRefusal(f"The image prompt {path.name} is over {MAX_IMAGE_BYTES // 2**20} MB: pick a smaller image.")
    return path.read_bytes()
