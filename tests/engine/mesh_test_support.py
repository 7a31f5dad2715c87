"""Small stand-ins for the fine-stage and export tests: an analytic sphere prior, a tiny colour
field, and an oracle target rendered from a known coloured sphere."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from headsculpt_engine.config import preset_config
from headsculpt_engine.mesh.raster import make_rasterizer
from headsculpt_engine.mesh.render import render_mesh


@dataclass
class SphereTransform:
    center: np.ndarray
    scale: float

    def to_canonical(self, points):
        return points / self.scale + self.center

    def to_normalised(self, points):
        return (points - self.center) * self.scale


class SpherePrior:
    """The parts of `HeadPrior` the fine stage and export use, for a sphere of radius `radius`
    (normalised frame) whose canonical frame is offset and scaled like a real head file's."""

    def __init__(self, radius: float = 0.45):
        self.radius = radius
        mesh = trimesh.creation.icosphere(subdivisions=3, radius=radius)
        self.vertices = mesh.vertices.astype(np.float32)
        self.faces = mesh.faces.astype(np.int32)
        self.transform = SphereTransform(center=np.array([0.01, 1.6, -0.02]), scale=7.0)
        self.content_hash = "sphere-test-prior"
        self.rig = None  # no skin or morph targets: the export writes a plain textured mesh
        self.landmark_calls = 0

    def signed_distance(self, points: torch.Tensor) -> torch.Tensor:
        return points.norm(dim=-1) - self.radius

    def landmark_maps(self, cameras, policy: str = "none") -> torch.Tensor:
        self.landmark_calls += 1
        return torch.zeros(len(cameras), 3, cameras.height, cameras.width)


class TinyColour(torch.nn.Module):
    """A small Fourier-feature MLP with the colour part of HeadField's interface."""

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(3, 16, generator=gen) * 3.0)
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
        with torch.no_grad():  # initialised from `seed` alone, so two instances start equal
            for layer, scale in ((self.net[0], 32 ** -0.5), (self.net[2], 0.1 * 32 ** -0.5)):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * scale)
                layer.bias.zero_()

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        proj = x @ self.freqs
        return torch.sigmoid(self.net(torch.cat([proj.sin(), proj.cos()], dim=-1)))


def two_tone(points: torch.Tensor) -> torch.Tensor:
    """Red on +x, blue on -x, smoothly blended: the oracle's known texture."""
    w = torch.sigmoid(points[:, :1] * 12.0)
    return w * torch.tensor([0.9, 0.15, 0.1]) + (1 - w) * torch.tensor([0.1, 0.2, 0.9])


def target_renderer(radius: float = 0.5):
    """target_fn(cameras) for the oracle: a two-tone sphere of `radius`, albedo-shaded."""
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    verts = torch.tensor(mesh.vertices, dtype=torch.float32)
    faces = torch.tensor(mesh.faces)
    rast = make_rasterizer("cpu", "torch")

    def target(cameras) -> torch.Tensor:
        with torch.no_grad():
            images, _ = render_mesh(rast, verts, faces, cameras, two_tone, "albedo")
        return images

    return target


def small_fine_config(iterations: int, checkpoint_every: int = 0):
    """The tiny preset with a fine stage small enough for a test (torch rasteriser, 32 px, 24^3 tets)."""
    cfg = preset_config("tiny")
    cfg.fine.iterations = iterations
    cfg.fine.resolution = 32
    cfg.fine.tet_resolution = 24
    cfg.fine.batch = 2
    cfg.fine.color_lr = 1e-2  # larger than the paper's so that the tiny tests converge in few iterations
    cfg.fine.lambda_laplacian = 0.1
    cfg.fine.rasterizer = "torch"
    cfg.fine.checkpoint_every = cfg.fine.preview_every = checkpoint_every
    # Albedo renders on white all through (the warm-up's "albedo" shading): the oracle's targets.
    cfg.coarse.warmup_shading, cfg.fine.warmup_iterations = "albedo", iterations
    return cfg
