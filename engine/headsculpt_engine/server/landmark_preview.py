"""The landmark contact sheet the add-on shows after an upload: the prior shaded from the front, left,
back and right, with the landmark map the ControlNet will see drawn over it, so the artist can tell
at a glance whether the face was found where it should be."""
from __future__ import annotations

from pathlib import Path
from typing import Any

VIEWS = (0.0, 90.0, 180.0, 270.0)  # azimuths: front, left, back, right
BACKGROUND = 0.08


def shaded_views(prior: Any, cameras: Any) -> "Any":
    """(B, H, W) grey levels: flat 'headlight' shading of the prior mesh, background dark."""
    import torch

    from ..mesh.raster import make_rasterizer

    vertices = torch.as_tensor(prior.vertices, dtype=torch.float32)
    faces = torch.as_tensor(prior.faces, dtype=torch.int64)
    raster = make_rasterizer(vertices.device, backend="torch").rasterize(vertices, faces, cameras)
    corners = vertices[faces]
    normals = torch.nn.functional.normalize(
        torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1), dim=-1)
    forward = -cameras.c2w[:, :3, 2]  # OpenGL cameras look along their -Z axis
    pixel_normals = normals[raster.triangle_id.clamp(min=0)]
    # |cos| shades both windings alike: an uploaded mesh's face orientation is not trusted here.
    facing = (pixel_normals * forward[:, None, None, :]).sum(-1).abs()
    return torch.where(raster.mask, 0.2 + 0.7 * facing, torch.full_like(facing, BACKGROUND))


def landmark_contact_sheet(prior: Any, size: int = 256) -> "Any":
    """A PIL image (4*size x size): the four views side by side, landmark lines in their colours."""
    import numpy as np
    import torch
    from PIL import Image

    from ..cameras import orbit_cameras

    cameras = orbit_cameras(list(VIEWS), polar_deg=85.0, radius=1.3, fov_y_deg=40.0, width=size, height=size)
    with torch.no_grad():
        grey = shaded_views(prior, cameras)[:, None].expand(-1, 3, -1, -1)
        maps = prior.landmark_maps(cameras, policy="none").to(grey)
        drawn = maps.amax(dim=1, keepdim=True) > 0
        sheet = torch.where(drawn, maps, grey)  # (B, 3, H, W)
    pixels = sheet.permute(2, 0, 3, 1).reshape(size, len(VIEWS) * size, 3)
    return Image.fromarray((pixels.clamp(0, 1).numpy() * 255).round().astype(np.uint8))


def write_landmark_preview(prior_dir: Path, out_path: Path) -> Path:
    """Render the sheet for a stored prior once; later calls reuse the file."""
    if not out_path.is_file():
        from .priors import load_engine_prior

        image = landmark_contact_sheet(load_engine_prior(prior_dir))
        tmp = out_path.with_suffix(".tmp.png")
        image.save(tmp)
        tmp.replace(out_path)
    return out_path
