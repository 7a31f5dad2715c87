"""The photos a textual-inversion token is learned from: read with Pillow, centre-cropped, resized.

Unreadable files are skipped with a reason rather than failing the whole run, since a folder of
photos collected by hand often holds a stray text file or a broken download.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    import torch

MIN_IMAGES = 3


@dataclass
class TrainingImages:
    pixels: "torch.Tensor"  # (N, 3, R, R) float32 in [-1, 1], the VAE's input range
    paths: list[Path]  # the files that were used, in the order of `pixels`
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why it was skipped)


def load_training_images(folder: Path | str, resolution: int) -> TrainingImages:
    """Every file directly in `folder` that Pillow reads, as square `resolution` crops.

    Raises InputError when the folder is missing or fewer than `MIN_IMAGES` files are usable.
    """
    import numpy as np
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"The image folder {folder} does not exist; pass a folder of photos with --images.")
    pixels, used, skipped = [], [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
                # Centre crop to a square, then resize (what Pillow's `fit` does in one call).
                image = ImageOps.fit(image, (resolution, resolution), method=Image.Resampling.BICUBIC)
                array = np.asarray(image, dtype=np.float32)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
            skipped.append((path, str(error) or type(error).__name__))
            continue
        pixels.append(torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0)
        used.append(path)
    if len(pixels) < MIN_IMAGES:
        raise InputError(
            f"Only {len(pixels)} usable image(s) in {folder} ({len(skipped)} unreadable); "
            f"learning a token needs at least {MIN_IMAGES} photos, a few dozen is better.")
    return TrainingImages(torch.stack(pixels), used, skipped)
