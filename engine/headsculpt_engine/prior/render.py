"""Grey shaded renders of the prior (for MediaPipe and for previews) with the engine's rasteriser."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras
    from ..mesh.raster import RasterOutput


def rasterize_prior(vertices: np.ndarray, faces: np.ndarray, cameras: "Cameras") -> "RasterOutput":
    import torch

    from ..mesh.raster import make_rasterizer

    rasterizer = make_rasterizer(cameras.device)
    v = torch.as_tensor(vertices, dtype=torch.float32, device=cameras.device)
    f = torch.as_tensor(faces, dtype=torch.int32, device=cameras.device)
    return rasterizer.rasterize(v, f, cameras)


def rasterize_facing(vertices: np.ndarray, faces: np.ndarray, cameras: "Cameras") -> "RasterOutput":
    """`rasterize_prior`, each view with only the faces turned towards its camera (`culling.py`:
    the same image on a closed mesh, about half the triangles). Triangle ids index `faces`; the
    output carries no backend state, so it is not for a backend's `interpolate` or `antialias`."""
    import torch

    from ..mesh.raster import RasterOutput
    from .culling import facing_faces

    facing = facing_faces(vertices, faces, cameras.positions().cpu().numpy().astype(np.float64))
    views = []
    for view in range(len(cameras)):
        kept = np.flatnonzero(facing[view])
        raster = rasterize_prior(vertices, faces[kept], cameras[view])
        kept_t = torch.as_tensor(kept, device=cameras.device)
        views.append(RasterOutput(triangle_id=torch.where(raster.mask, kept_t[raster.triangle_id.clamp_min(0)], -1),
                                  barycentric=raster.barycentric, depth=raster.depth, mask=raster.mask))
    return RasterOutput(*(torch.cat([getattr(r, name) for r in views])
                          for name in ("triangle_id", "barycentric", "depth", "mask")))


def shade(vertices: np.ndarray, faces: np.ndarray, cameras: "Cameras") -> tuple[np.ndarray, "RasterOutput"]:
    """(B, H, W, 3) uint8 grey renders lit from just above the camera (ambient + two-sided Lambert),
    on a mid-grey background that face detectors handle well; also returns the raster
    (`rasterize_facing`)."""
    import torch

    from ..mesh.raster import TorchRasterizer
    from ..mesh.render import vertex_normals

    raster = rasterize_facing(vertices, faces, cameras)
    v = torch.as_tensor(vertices, dtype=torch.float32, device=cameras.device)
    f = torch.as_tensor(faces, dtype=torch.int32, device=cameras.device)
    # The generic interpolation (triangle ids and barycentrics only), on any device.
    normals = TorchRasterizer().interpolate(vertex_normals(v, f), raster, f)
    normals = torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)
    _, dirs = cameras.rays()
    # Light slightly above the camera, so that brows, nose and lips cast their usual shading.
    up = cameras.c2w[:, None, None, :3, 1]
    light = torch.nn.functional.normalize(-dirs + 0.35 * up, dim=-1)
    lambert = (normals * light).sum(-1).abs()
    grey = 0.18 + 0.75 * lambert
    grey = torch.where(raster.mask, grey, torch.full_like(grey, 0.35))
    image = (grey.clamp(0, 1) * 255).round().to(torch.uint8)
    return image.unsqueeze(-1).expand(-1, -1, -1, 3).cpu().numpy(), raster
