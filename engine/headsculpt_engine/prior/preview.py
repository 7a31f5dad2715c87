"""The landmark preview: each view's landmark map over a shaded render of the prior, side by side.
The CLI writes it as a contact sheet; the server serves it as the prior's landmark preview."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..cameras import Cameras
    from .head import HeadPrior

VIEW_AZIMUTHS = {"front": 0.0, "left": 90.0, "back": 180.0, "right": 270.0}
PREVIEW_RADIUS = 2.0
PREVIEW_FOV = 32.0


def landmark_view_cameras(size: int, device=None) -> "Cameras":
    """Front, left, back and right cameras (azimuth 0, 90, 180, 270) at eye level."""
    from ..cameras import orbit_cameras

    return orbit_cameras(list(VIEW_AZIMUTHS.values()), 90.0, PREVIEW_RADIUS, PREVIEW_FOV, size, size, device=device)


def overlay(shaded: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Landmark map pixels (non-black) over the shaded renders; both (B, H, W, 3) uint8."""
    drawn = maps.any(axis=-1, keepdims=True)
    return np.where(drawn, maps, shaded)


def contact_sheet(prior: "HeadPrior", size: int = 384, policy: str = "oval") -> np.ndarray:
    """(size + label band, 4 * size, 3) uint8: front, left, back, right, each map over the shaded prior."""
    from PIL import Image, ImageDraw

    from .render import shade

    cameras = landmark_view_cameras(size)
    shaded, _ = shade(prior.vertices, prior.faces, cameras)
    maps = (prior.landmark_maps(cameras, policy).permute(0, 2, 3, 1) * 255).round().byte().cpu().numpy()
    tiles = overlay(shaded, maps)
    band = 24
    sheet = Image.new("RGB", (size * len(tiles), size + band), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    for i, (name, tile) in enumerate(zip(VIEW_AZIMUTHS, tiles)):
        sheet.paste(Image.fromarray(tile), (i * size, band))
        draw.text((i * size + 8, 6), name, fill=(230, 230, 230))
    return np.asarray(sheet)
