"""Landmark maps of a prior for a batch of cameras: project the 3D landmarks, hide those behind the
head, draw them by the spec (`landmark_map.py`). Back views follow the back-view policy: "none" draws
nothing (HeadSculpt then guides without the ControlNet), "oval" draws only the face oval (HeadArtist),
as the outline of the face seen through the head."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from .landmark_map import BACK_VIEW_POLICIES, draw_landmark_map

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras
    from .head import HeadPrior

# Visibility needs depth only where landmarks are: a coarser raster keeps maps fast at 512x512.
VISIBILITY_MAX_SIZE = 128
# A landmark counts as hidden when the visible surface at its pixel is nearer by more than this.
VISIBILITY_TOLERANCE = 0.02  # normalised units (about 5 mm on an adult head)


def landmark_visibility(prior: "HeadPrior", cameras: "Cameras") -> "torch.Tensor":
    """(B, 478) bool: the landmark exists and no surface lies nearer to the camera at its pixel."""
    import torch

    from .render import rasterize_prior

    points = torch.as_tensor(prior.landmark_points(), dtype=torch.float32, device=cameras.device)
    found = torch.isfinite(points).all(dim=-1)
    scale = min(1.0, VISIBILITY_MAX_SIZE / max(cameras.width, cameras.height))
    small = cameras.with_size(max(1, round(cameras.width * scale)), max(1, round(cameras.height * scale)))
    xy, depth = small.project(torch.nan_to_num(points))
    with torch.no_grad():
        surface = rasterize_prior(prior.vertices, prior.faces, small).depth  # (B, h, w)
    # The farthest surface among the 3x3 pixels around the landmark: a landmark on a steep slope
    # (nose side, jaw line) is not hidden by its own neighbouring pixels.
    finite = torch.where(torch.isfinite(surface), surface, torch.full_like(surface, 1e9))
    deepest = torch.nn.functional.max_pool2d(finite[:, None], 3, stride=1, padding=1)[:, 0]
    px = xy[..., 0].floor().long()
    py = xy[..., 1].floor().long()
    inside = (px >= 0) & (px < small.width) & (py >= 0) & (py < small.height) & (depth > 0)
    b = torch.arange(len(small), device=cameras.device)[:, None].expand_as(px)
    at = deepest[b, py.clamp(0, small.height - 1), px.clamp(0, small.width - 1)]
    return found[None] & inside & (depth <= at + VISIBILITY_TOLERANCE)


def render_landmark_maps(prior: "HeadPrior", cameras: "Cameras", policy: str = "none") -> "torch.Tensor":
    """(B, 3, H, W) float maps in [0, 1]; all black where the prior has no landmarks."""
    import torch

    if policy not in BACK_VIEW_POLICIES:
        raise InputError(f"Unknown back-view policy {policy!r}; use one of {', '.join(BACK_VIEW_POLICIES)}.")
    batch, height, width = len(cameras), cameras.height, cameras.width
    maps = np.zeros((batch, height, width, 3), dtype=np.uint8)
    if prior.landmarks is not None:
        points = torch.as_tensor(prior.landmark_points(), dtype=torch.float32, device=cameras.device)
        found = torch.isfinite(points).all(dim=-1)
        xy, depth = cameras.project(torch.nan_to_num(points))
        visible = landmark_visibility(prior, cameras)
        xy_np = xy.cpu().numpy()
        for i, name in enumerate(cameras.view_names()):
            if name == "back":
                if policy == "oval":
                    oval_ok = (found & (depth[i] > 0)).cpu().numpy()
                    maps[i] = draw_landmark_map(xy_np[i], oval_ok, width, height, oval_only=True)
                continue
            maps[i] = draw_landmark_map(xy_np[i], visible[i].cpu().numpy(), width, height)
    return torch.from_numpy(maps).to(cameras.device).permute(0, 3, 1, 2).float() / 255.0
