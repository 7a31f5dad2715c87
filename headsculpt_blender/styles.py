"""The panel's style LoRA and image prompt as fields of a job request (StyleAvatar3D, issue 18).

The engine takes a LoRA by Hugging Face id (owner/name) from its own model cache, never by a path
on this computer (it may run elsewhere); the image prompt is uploaded to it, as the prior is.
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
    """{"loras": [...]} for the panel's LoRA (or, when it is empty, the preferences' one); {} for none."""
    own = st.lora.strip()
    source, scale = (own, st.lora_scale) if own else (prefs.lora.strip(), prefs.lora_scale)
    if not source:
        return {}
    if not HUB_ID.match(source):
        raise StyleRefusal(f"The style LoRA \"{source}\" is not a Hugging Face id (owner/name): the engine takes "
                           "LoRAs from its model cache by id; use a file with the `headsculpt` command line.")
    return {"loras": [{"id": source, "scale": float(scale)}]}


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
