"""Views of a finished avatar for the metrics: its exported textured mesh (`result/avatar.obj` with its
albedo texture), lit as the turntable is and seen from the turntable's cameras."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras

# The radius the engine normalises a head to for training and previews (DESIGN.md, "Coordinate frames").
NORMALISED_RADIUS = 0.7
AMBIENT = 0.4  # as the exported turntable


def load_textured_mesh(result_dir: Path):
    """(vertices (V, 3), faces (F, 3), uv (V, 2), texture (H, W, 3) uint8) of an exported avatar."""
    import trimesh

    path = result_dir / "avatar.obj"
    if not path.is_file():
        raise InputError(f"{result_dir} has no avatar.obj: is this a finished run's result folder?")
    mesh = trimesh.load(path, process=False, force="mesh")
    uv = getattr(mesh.visual, "uv", None)
    image = getattr(getattr(mesh.visual, "material", None), "image", None)
    if uv is None or image is None or len(uv) != len(mesh.vertices):
        raise InputError(f"{path} has no texture coordinates or texture; export the run again.")
    texture = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy
    return (np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.int64),
            np.asarray(uv, dtype=np.float32), texture)


def render_views(result_dir: Path, count: int, size: int = 224) -> list[np.ndarray]:
    """`count` RGB uint8 views (size x size) around the avatar, the first from the front."""
    import torch

    from ..cameras import turntable_cameras

    vertices, faces, uv, texture = load_textured_mesh(result_dir)
    centre = (vertices.max(axis=0) + vertices.min(axis=0)) / 2
    scale = NORMALISED_RADIUS / max(float(np.linalg.norm(vertices - centre, axis=1).max()), 1e-9)
    points = torch.from_numpy((vertices - centre) * scale)
    return render_textured(points, faces, uv, texture, turntable_cameras(count, size))


def render_textured(points: "torch.Tensor", faces: np.ndarray, uv: np.ndarray, texture: np.ndarray,
                    cameras: "Cameras") -> list[np.ndarray]:
    """RGB uint8 views of a textured mesh (`points` in the cameras' frame) from each camera, lit as the
    turntable is (lambertian, the light at the camera, white background)."""
    import torch

    from ..mesh.raster import make_rasterizer
    from ..mesh.render import render_mesh

    image = torch.from_numpy(texture).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)

    def sample_texture(coords: torch.Tensor) -> torch.Tensor:
        # Texture rows run top to bottom, v runs bottom to top (as glTF/OBJ): y = 1 - 2v.
        grid = torch.stack([coords[:, 0] * 2 - 1, 1 - coords[:, 1] * 2], dim=-1).view(1, -1, 1, 2)
        return torch.nn.functional.grid_sample(image, grid, align_corners=False).view(3, -1).T

    rasterizer = make_rasterizer("cpu", "torch")
    views = []
    with torch.no_grad():
        for index in range(len(cameras)):
            rendered, _ = render_mesh(rasterizer, points.float(), torch.from_numpy(faces), cameras[[index]],
                                      sample_texture, "lambertian", ambient=AMBIENT, uv=torch.from_numpy(uv))
            views.append((rendered[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    return views
