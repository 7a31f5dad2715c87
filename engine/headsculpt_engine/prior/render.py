"""Shaded renders of the prior (for MediaPipe and for previews) with the engine's rasteriser."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras
    from ..mesh.raster import RasterOutput


def rasterize_prior(vertices: np.ndarray, faces: np.ndarray, cameras: "Cameras", cull: bool = False) -> "RasterOutput":
    """The prior's raster; with `cull`, the torch backend draws each view with only the faces turned
    towards its camera (`culling.py`: the same image on a closed mesh, about half the work; nvdiffrast
    on CUDA draws everything, it is fast enough)."""
    import torch

    from ..mesh.raster import TorchRasterizer, make_rasterizer
    from .culling import facing_faces

    rasterizer = make_rasterizer(cameras.device)
    v = torch.as_tensor(vertices, dtype=torch.float32, device=cameras.device)
    f = torch.as_tensor(faces, dtype=torch.int32, device=cameras.device)
    if not (cull and isinstance(rasterizer, TorchRasterizer)):
        return rasterizer.rasterize(v, f, cameras)
    facing = facing_faces(vertices, faces, cameras.positions().cpu().numpy().astype(np.float64))
    return rasterizer.rasterize(v, f, cameras, shown=torch.as_tensor(facing, device=cameras.device))


GREY = (1.0, 1.0, 1.0)
# What face detection renders the head in: a light skin tone rather than grey, as FaceMesh learnt from
# photographs. Measured against the authors' map (docs/fidelity.md): on the FLAME template median 5.36
# -> 5.27 mm, p90 9.31 -> 8.90 mm, face oval 8.47 -> 8.29 mm; on the smiling FLAME head 6.02 -> 5.37,
# 11.15 -> 10.81 and 11.63 -> 10.84 mm.
SKIN_TONE = (1.0, 0.80, 0.68)
BACKGROUND_GREY = 0.35


def shade(vertices: np.ndarray, faces: np.ndarray, cameras: "Cameras",
          tone: tuple[float, float, float] = GREY) -> tuple[np.ndarray, "RasterOutput"]:
    """(B, H, W, 3) uint8 renders of the head in `tone` (grey for previews, `SKIN_TONE` for face
    detection) lit from just above the camera (ambient + two-sided Lambert), on a mid-grey background
    that face detectors handle well; also returns the (culled) raster."""
    import torch

    from ..mesh.raster import make_rasterizer
    from ..mesh.render import vertex_normals

    raster = rasterize_prior(vertices, faces, cameras, cull=True)
    v = torch.as_tensor(vertices, dtype=torch.float32, device=cameras.device)
    f = torch.as_tensor(faces, dtype=torch.int32, device=cameras.device)
    normals = make_rasterizer(cameras.device).interpolate(vertex_normals(v, f), raster, f)
    normals = torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)
    _, dirs = cameras.rays()
    # Light slightly above the camera, so that brows, nose and lips cast their usual shading.
    up = cameras.c2w[:, None, None, :3, 1]
    light = torch.nn.functional.normalize(-dirs + 0.35 * up, dim=-1)
    lambert = (normals * light).sum(-1).abs()
    shading = (0.18 + 0.75 * lambert).unsqueeze(-1)
    colour = torch.where(raster.mask.unsqueeze(-1), shading * torch.tensor(tone, device=shading.device),
                         torch.full_like(shading, BACKGROUND_GREY))
    image = (colour.clamp(0, 1) * 255).round().to(torch.uint8)
    return image.cpu().numpy(), raster
