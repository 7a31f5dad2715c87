"""Image prompts uploaded to the engine (POST /v1/images): decoded, checked and stored as PNG.

The client's bytes are never kept as they came: the image is decoded by Pillow (size-checked first,
so a decompression bomb is refused), converted to RGB as a local image prompt is (`as_rgb`:
transparency on white) and written as a fresh PNG named by its sha256 inside the data folder. Jobs
name it by that id, never by a path.
"""
from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

from ..guidance.image_prompt import as_rgb
from .blobs import BlobFolder

MAX_SIDE = 4096


class BadImage(Exception):
    """The upload is not an image the engine can use; the message says why."""


class ImageStore:
    def __init__(self, data_dir: Path):
        self.blobs = BlobFolder(Path(data_dir) / "images", ".png")

    def add(self, data_b64: str) -> dict[str, int | str]:
        """Decode, check and store one image; its id, width and height."""
        from PIL import Image, UnidentifiedImageError

        try:
            raw = base64.b64decode(data_b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadImage("The image is not valid base64 text.") from None
        try:
            with Image.open(io.BytesIO(raw)) as image:
                if max(image.size) > MAX_SIDE:
                    raise BadImage(f"The image is {image.size[0]}x{image.size[1]} pixels; send one of at most "
                                   f"{MAX_SIDE} pixels a side.")
                rgb = as_rgb(image)
        except BadImage:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise BadImage("The upload could not be read as an image; send a PNG or JPEG file.") from None
        buffer = io.BytesIO()
        rgb.save(buffer, format="PNG")
        return {"image_id": self.blobs.put(buffer.getvalue()), "width": rgb.width, "height": rgb.height}

    def path(self, image_id: str) -> Path | None:
        """The stored image of that id (a regular file inside the store), or None."""
        return self.blobs.path(image_id)
