"""Shaded renders of a triangle mesh with a colour field, for the fine stage, previews and turntables.

Shading follows the coarse stage (DreamFusion-style): "albedo" shows the colour field as is,
"lambertian" multiplies it by ambient + diffuse light, "textureless" shades a white surface so the
guidance judges the geometry alone. "normal" shows world-space unit normals mapped to [0, 1]
(n / 2 + 1/2), the normal maps HeadArtist's SSD distils geometry from.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

from .raster import Rasterizer

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras

Shading = Literal["albedo", "lambertian", "textureless", "normal"]
AlbedoFn = Callable[["torch.Tensor"], "torch.Tensor"]  # points (N, 3) -> colours (N, 3) in [0, 1]


def vertex_normals(vertices: "torch.Tensor", faces: "torch.Tensor") -> "torch.Tensor":
    """Area-weighted unit vertex normals (V, 3)."""
    import torch

    faces = faces.long()
    v = vertices[faces]
    face_n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
    normals = torch.zeros_like(vertices).index_add(0, faces.reshape(-1), face_n.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)


def render_mesh(rasterizer: Rasterizer, vertices: "torch.Tensor", faces: "torch.Tensor", cameras: "Cameras",
                albedo_fn: AlbedoFn, shading: Shading = "albedo", light_dirs: "torch.Tensor | None" = None,
                ambient: float = 0.3, background: "float | torch.Tensor" = 1.0,
                uv: "torch.Tensor | None" = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Images (B, 3, H, W) in [0, 1], antialiased at silhouettes, and coverage masks (B, 1, H, W).

    `light_dirs` (B, 3) are unit vectors towards the light; by default the light sits at the camera.
    `background` is one grey level, or (B, 3) solid colours, one per view.
    `albedo_fn` gets the surface points under the pixels, or, with per-vertex texture coordinates `uv`
    (V, 2) given, their interpolated texture coordinates (a textured mesh).
    """
    import torch

    raster = rasterizer.rasterize(vertices, faces, cameras)
    mask = raster.mask
    batch = mask.shape[0]
    colour = vertices.new_zeros((*mask.shape, 3))
    if shading == "normal":
        normals = torch.nn.functional.normalize(rasterizer.interpolate(vertex_normals(vertices, faces), raster, faces),
                                                dim=-1, eps=1e-12)
        colour = normals * 0.5 + 0.5
    elif shading != "textureless" and bool(mask.any()):
        points = rasterizer.interpolate(vertices if uv is None else uv, raster, faces)[mask]
        colour = colour.index_put((mask,), albedo_fn(points).to(colour.dtype))
    elif shading == "textureless":
        colour = colour + 1.0
    if shading not in ("albedo", "normal"):
        normals = torch.nn.functional.normalize(rasterizer.interpolate(vertex_normals(vertices, faces), raster, faces),
                                                dim=-1, eps=1e-12)
        if light_dirs is None:
            light_dirs = torch.nn.functional.normalize(cameras.positions(), dim=-1)
        diffuse = (normals * light_dirs.to(normals).view(batch, 1, 1, 3)).sum(-1, keepdim=True).clamp_min(0.0)
        colour = colour * (ambient + (1.0 - ambient) * diffuse)
    fg = mask.unsqueeze(-1).to(colour.dtype)
    if isinstance(background, torch.Tensor):
        background = background.to(colour).view(batch, 1, 1, 3)
    image = colour * fg + background * (1.0 - fg)
    image = rasterizer.antialias(image, raster, vertices, faces, cameras)
    return image.permute(0, 3, 1, 2).clamp(0.0, 1.0), fg.permute(0, 3, 1, 2)


def to_uint8_grid(images: "torch.Tensor") -> "object":
    """(B, 3, H, W) in [0, 1] side by side as one Pillow image."""
    from PIL import Image

    row = images.detach().clamp(0, 1).permute(2, 0, 3, 1).reshape(images.shape[2], -1, 3)
    return Image.fromarray((row.cpu().numpy() * 255.0 + 0.5).astype("uint8"))
