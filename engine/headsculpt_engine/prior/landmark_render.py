"""Landmark maps of a head mesh for a batch of cameras: project the 3D landmarks, hide those behind the
head, draw them by the spec (`landmark_map.py`). Plain arrays in (vertices, faces, landmark points),
so that `HeadPrior` (head.py) calls this module and this module knows nothing of it. Back views follow the back-view policy: "none" draws
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

# Visibility needs depth only where landmarks are: a coarser raster keeps maps fast at 512x512.
VISIBILITY_MAX_SIZE = 128
# A landmark counts as hidden when the visible surface at its pixel is nearer by more than this.
VISIBILITY_TOLERANCE = 0.02  # normalised units (about 5 mm on an adult head)


def landmark_visibility(vertices: np.ndarray, faces: np.ndarray, landmark_points: np.ndarray,
                        cameras: "Cameras") -> "torch.Tensor":
    """(B, 478) bool: the landmark (a row of `landmark_points`, NaN = missing) exists and no surface
    of the mesh lies nearer to the camera at its pixel."""
    import torch

    from .render import rasterize_prior

    points = torch.as_tensor(landmark_points, dtype=torch.float32, device=cameras.device)
    found = torch.isfinite(points).all(dim=-1)
    scale = min(1.0, VISIBILITY_MAX_SIZE / max(cameras.width, cameras.height))
    small = cameras.with_size(max(1, round(cameras.width * scale)), max(1, round(cameras.height * scale)))
    xy, depth = small.project(torch.nan_to_num(points))
    with torch.no_grad():
        surface = rasterize_prior(vertices, faces, small).depth  # (B, h, w)
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


def render_landmark_maps(vertices: np.ndarray, faces: np.ndarray, landmark_points: "np.ndarray | None",
                         cameras: "Cameras", policy: str = "none") -> "torch.Tensor":
    """(B, 3, H, W) float maps in [0, 1]; all black where there are no landmarks (None)."""
    import torch

    if policy not in BACK_VIEW_POLICIES:
        raise InputError(f"Unknown back-view policy {policy!r}; use one of {', '.join(BACK_VIEW_POLICIES)}.")
    batch, height, width = len(cameras), cameras.height, cameras.width
    maps = np.zeros((batch, height, width, 3), dtype=np.uint8)
    if landmark_points is not None:
        points = torch.as_tensor(landmark_points, dtype=torch.float32, device=cameras.device)
        found = torch.isfinite(points).all(dim=-1)
        xy, depth = cameras.project(torch.nan_to_num(points))
        visible = landmark_visibility(vertices, faces, landmark_points, cameras)
        xy_np = xy.cpu().numpy()
        for i, name in enumerate(cameras.view_names()):
            if name == "back":
                if policy == "oval":
                    oval_ok = (found & (depth[i] > 0)).cpu().numpy()
                    maps[i] = draw_landmark_map(xy_np[i], oval_ok, width, height, oval_only=True)
                continue
            maps[i] = draw_landmark_map(xy_np[i], visible[i].cpu().numpy(), width, height)
    return torch.from_numpy(maps).to(cameras.device).permute(0, 3, 1, 2).float() / 255.0
