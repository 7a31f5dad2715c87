"""An image as prompt: the reference image's IP-Adapter embedding, and which rows of a step get it.

As diffusers' pipelines do, conditional rows get the image's embedding and unconditional rows a zero
embedding, both at the IP-Adapter scale. Front and side views take `scale`; back views take
`back_scale`, 0 by default: a reference image shows a face, and pulling a back view towards it paints
a face on the back of the head (the multi-face "Janus" problem that HeadSculpt's `<back-view>` token
is there to prevent). At scale 0 the IP-Adapter's attention is skipped, so those rows are exactly the
text-only prediction (docs/fidelity.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import InputError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..models.loading import DiffusionModels


@dataclass
class ImageRows:
    """The IP-Adapter conditioning of one branch's rows."""

    embeds: "torch.Tensor"  # (B, 1, D): the image's embedding, or zeros for unconditional rows
    scales: "torch.Tensor"  # (B,) IP-Adapter scale of each row


@dataclass
class ImagePrompt:
    """The reference image's embedding (1, D) and its scales on front/side and on back views."""

    embedding: "torch.Tensor"
    scale: float = 1.0
    back_scale: float = 0.0

    def rows(self, views: Sequence[str], conditional: bool) -> ImageRows:
        import torch

        embeds = self.embedding.expand(len(views), -1)[:, None, :]
        scales = torch.tensor([self.back_scale if view == "back" else self.scale for view in views])
        return ImageRows(embeds if conditional else torch.zeros_like(embeds), scales)


# Where a reference image is transparent (a character cut out on transparency), the IP-Adapter sees
# this colour, not whatever colours the file keeps under the alpha.
TRANSPARENT_BACKGROUND = (255, 255, 255)


def as_rgb(image: "Image.Image") -> "Image.Image":
    """8-bit RGB of a decoded image as it looks: turned as its EXIF orientation says (a phone photo is
    stored sideways), transparent parts laid on a white background, 16-bit grey scaled down (Pillow's
    own conversion clips it to white)."""
    import numpy as np
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0.0, 255.0).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        cut_out = image.convert("RGBA")
        flat = Image.new("RGBA", cut_out.size, (*TRANSPARENT_BACKGROUND, 255))
        flat.alpha_composite(cut_out)
        return flat.convert("RGB")
    return image.convert("RGB")


def read_image(path: str | Path) -> "Image.Image":
    """The image file as RGB (`as_rgb`); a sentence when it is missing or not an image PIL can decode."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"The image prompt {file} does not exist: pass a PNG or JPEG file.")
    try:
        with Image.open(file) as image:
            return as_rgb(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise InputError(f"The image prompt {file} could not be read as an image; pass a PNG or JPEG file.") from error


def image_prompt(models: "DiffusionModels", image: "Image.Image", scale: float, back_scale: float) -> ImagePrompt:
    """Encode `image` with the IP-Adapter's image encoder (its processor resizes and normalises it)."""
    import torch

    if models.image_encoder is None:
        raise ValueError("An image prompt needs the IP-Adapter: load the models with with_image_prompt=True.")
    pixels = models.image_processor(image, return_tensors="pt").pixel_values
    encoder = models.image_encoder
    with torch.no_grad():
        embedding = encoder(pixels.to(encoder.device, encoder.dtype)).image_embeds
    return ImagePrompt(embedding.float(), float(scale), float(back_scale))


def set_ip_adapter_scale(unet, scale: float) -> None:
    """The scale of every IP-Adapter attention processor of `unet` (what the pipelines'
    set_ip_adapter_scale sets; the UNet itself has no such method)."""
    for processor in unet.attn_processors.values():
        if hasattr(processor, "scale") and hasattr(processor, "to_k_ip"):
            processor.scale = [float(scale)] * len(processor.scale)
