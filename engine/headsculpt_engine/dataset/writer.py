"""The dataset folder:

    OUT/images/          the folder to give the 3D-GAN trainer: 00000.png, ... and dataset.json
                         ({"labels": [[filename, 25 numbers]]}, cameras_eg3d.py); nothing else, since
                         EG3D's loader takes every image file below the folder it is given
    OUT/conditions/      the landmark map each image was conditioned on (same filenames)
    OUT/views.json       the settings, and per image its prompt, view label, camera and seed
    OUT/contact_sheet.png  the first images above their landmark maps

An image is written under a temporary name and renamed, so an image that exists is complete: a rerun
skips it (resume). A folder made with other settings is refused rather than mixed.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

IMAGES_DIR = "images"
CONDITIONS_DIR = "conditions"
LABELS_FILE = "dataset.json"
VIEWS_FILE = "views.json"
CONTACT_SHEET = "contact_sheet.png"
SHEET_IMAGES = 8
SHEET_TILE = 128


@dataclass
class ImageRecord:
    index: int
    prompt: str
    view: str  # front | side | back
    label: list[float]  # EG3D's 25 numbers
    seed: int
    azimuth: float
    polar: float
    radius: float
    fov_y: float  # degrees
    source: dict

    @property
    def filename(self) -> str:
        return f"{self.index:05d}.png"


class DatasetWriter:
    def __init__(self, root: Path, settings: dict):
        self.root = Path(root)
        self.images = self.root / IMAGES_DIR
        self.conditions = self.root / CONDITIONS_DIR
        # As views.json will hold them (JSON has lists where Python has tuples).
        self.settings = json.loads(json.dumps(settings))

    def check(self) -> None:
        """Refuse a folder that holds another dataset (or other files); call before writing anything."""
        views = self.root / VIEWS_FILE
        if views.is_file():
            try:
                held = json.loads(views.read_text(encoding="utf-8")).get("settings")
            except (OSError, ValueError, AttributeError):
                held = None
            if held != self.settings:
                raise InputError(f"{self.root} holds a dataset made with other settings (prompts, prior, seed, "
                                 "models, styles or sampling); rerun with the same settings to resume, or choose "
                                 "another --out folder.")
        elif self.images.is_dir() and any(self.images.iterdir()):
            raise InputError(f"{self.images} already holds files that are not a dataset of this command; "
                             "choose another --out folder.")

    def has(self, record: ImageRecord) -> bool:
        return (self.images / record.filename).is_file()

    def write(self, record: ImageRecord, image: np.ndarray, condition: np.ndarray) -> None:
        _save_png(self.conditions / record.filename, condition)
        _save_png(self.images / record.filename, image)

    def finish(self, records: list[ImageRecord]) -> int:
        """dataset.json and views.json for the images that exist, and the contact sheet; the image count."""
        done = [r for r in records if self.has(r)]
        if not done:  # e.g. the models failed to load before the first image: leave nothing behind
            return 0
        _save_json(self.images / LABELS_FILE, {"labels": [[r.filename, r.label] for r in done]}, indent=None)
        _save_json(self.root / VIEWS_FILE, {"settings": self.settings, "images": [
            {"file": f"{IMAGES_DIR}/{r.filename}", "condition": f"{CONDITIONS_DIR}/{r.filename}",
             **{k: v for k, v in asdict(r).items() if k != "label"}} for r in done]})
        _save_png(self.root / CONTACT_SHEET, self._contact_sheet(done[:SHEET_IMAGES]))
        return len(done)

    def _contact_sheet(self, records: list[ImageRecord]) -> np.ndarray:
        """Each image above its landmark map, labelled with its number and view."""
        from PIL import Image, ImageDraw

        band, tile = 18, SHEET_TILE
        sheet = Image.new("RGB", (tile * len(records), band + 2 * tile), (20, 20, 20))
        draw = ImageDraw.Draw(sheet)
        for i, record in enumerate(records):
            for row, folder in enumerate((self.images, self.conditions)):
                path = folder / record.filename
                if path.is_file():
                    with Image.open(path) as picture:
                        sheet.paste(picture.convert("RGB").resize((tile, tile)), (i * tile, band + row * tile))
            draw.text((i * tile + 4, 3), f"{record.index:05d} {record.view}", fill=(230, 230, 230))
        return np.asarray(sheet)


def _save_png(path: Path, pixels: np.ndarray) -> None:
    """Written under a name no image loader takes for an image, then renamed into place."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(partial, format="PNG")
    os.replace(partial, path)


def _save_json(path: Path, data: dict, indent: int | None = 1) -> None:
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(json.dumps(data, indent=indent), encoding="utf-8")
    os.replace(partial, path)
