"""Where the built-in head's files are: an installed engine wheel carries them in its package
(`build.py build` puts them there); a source checkout reads them from the repository's flame_assets/.
A module of its own so that code needing only the files (the keypoint template) does not import the
prior loader."""
from __future__ import annotations

from pathlib import Path

BASE_HEAD = "base_head.obj"
BASE_HEAD_LANDMARKS = "base_head_landmarks.npz"
# engine/headsculpt_engine/prior/ -> engine/headsculpt_engine/assets, or the repository root.
PACKAGED_ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
CHECKOUT_ASSETS_DIR = Path(__file__).resolve().parents[3] / "flame_assets"
ASSETS_DIR = PACKAGED_ASSETS_DIR if (PACKAGED_ASSETS_DIR / BASE_HEAD).is_file() else CHECKOUT_ASSETS_DIR


def builtin_mesh_path() -> Path:
    return ASSETS_DIR / BASE_HEAD
