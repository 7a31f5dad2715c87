"""Volume rendering of the coarse NeRF (HeadSculpt Eq. 4) with empty-space skipping and shading.

Every ray gets `samples` evenly spaced points between its entry into and exit from the scene cube
(with one random offset per ray while training). Only the points in occupied cells of the occupancy
grid are sent through the field, in one batch; the rest have zero density. Compositing is
C = sum_i T_i (1 - exp(-sigma_i delta_i)) c_i, T_i = prod_{j<i} exp(-sigma_j delta_j), plus the
background times the remaining transmittance. Everything is vectorised over rays and samples.

Shading uses the MLP's predicted normals, or the density-gradient ones when asked. Shading modes:
"albedo"; "lambertian" = albedo * (ambient + (1 - ambient) max(0, n.l)); "textureless"
= the same with white albedo; "normal" = the normals as colours, (n + 1) / 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cameras import Cameras
from .background import Background
from .field import HeadField
from .occupancy import OccupancyGrid

SHADINGS = ("albedo", "lambertian", "textureless", "normal")


@dataclass
class RenderSettings:
    samples: int
    bound: float
    ambient: float = 0.3
    shading: str = "albedo"
    perturb: bool = False
    entropy: bool = False  # also return the mean binary entropy of the kept samples' weights
    orientation: bool = False  # also return the orientation penalty (density-gradient normals)
    normal_consistency: bool = False  # also return the predicted-vs-gradient normal penalty
    gradient_shading: bool = False  # shade with density-gradient normals instead of predicted ones


@dataclass
class RenderOutput:
    image: torch.Tensor  # (B, 3, H, W)
    opacity: torch.Tensor  # (B, 1, H, W)
    entropy: torch.Tensor  # scalar: mean over kept samples of H2(clamp(w_i, 1e-5, 1 - 1e-5)) (0 when off)
    orientation: torch.Tensor  # scalar: mean over rays of sum_i w_i max(0, n_i . d)^2 (0 when off)
    normal_consistency: torch.Tensor  # scalar: mean over rays of sum_i w_i |n_pred - n_grad|^2 (0 when off)
    samples_evaluated: int


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of rays (N, 3) through the cube [-bound, bound]^3 (exit <= entry: miss)."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) / safe
    t1 = (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far


def weight_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Mean binary entropy (bits) of per-sample weights clamped to [1e-5, 1 - 1e-5], as the authors'
    code (stable-dreamfusion) takes it over the samples its ray marcher evaluates (here: the samples
    in occupied cells). It pushes each weight towards 0 or 1: crisp surfaces, no fog."""
    w = weights.clamp(1e-5, 1.0 - 1e-5)
    return (-w * torch.log2(w) - (1 - w) * torch.log2(1 - w)).mean()


def orientation_penalty(normals: torch.Tensor, dirs: torch.Tensor, weights: torch.Tensor, rays: int) -> torch.Tensor:
    """Ref-NeRF's orientation loss as the authors' code has it: sum_i stopgrad(w_i) max(0, n_i . d)^2
    per ray, averaged over the rays; it penalises visible normals that face away from the camera."""
    facing = (normals * dirs).sum(-1).clamp_min(0.0) ** 2
    return (weights.detach() * facing).sum() / rays


def shade(shading: str, albedo: torch.Tensor, normals: torch.Tensor, light: torch.Tensor,
          ambient: float) -> torch.Tensor:
    if shading == "albedo":
        return albedo
    if shading == "normal":
        return (normals + 1.0) * 0.5
    lambert = ambient + (1.0 - ambient) * (normals * light).sum(-1, keepdim=True).clamp_min(0.0)
    if shading == "lambertian":
        return albedo * lambert
    if shading == "textureless":
        return lambert.expand(-1, 3)
    raise ValueError(f"Unknown shading {shading!r}: choose one of {', '.join(SHADINGS)}.")


def render(field: HeadField, grid: OccupancyGrid, background: Background, cameras: Cameras,
           settings: RenderSettings, light_dirs: torch.Tensor | None = None,
           generator: torch.Generator | None = None, background_colours: torch.Tensor | None = None) -> RenderOutput:
    """Render `cameras` (B views of H x W). `light_dirs` (B, 3): unit directions towards the light;
    `background_colours` (B, 3): solid colours that replace the background module for these views."""
    batch, height, width, samples = len(cameras), cameras.height, cameras.width, settings.samples
    device = cameras.device
    origins, dirs = cameras.rays()
    origins, dirs = origins.reshape(-1, 3).float(), dirs.reshape(-1, 3).float()
    rays = origins.shape[0]
    near, far = ray_box(origins, dirs, settings.bound)
    length = (far - near).clamp_min(0.0)
    if settings.perturb:
        offset = torch.rand(rays, 1, generator=generator).to(device)
    else:
        offset = torch.full((rays, 1), 0.5, device=device)
    steps = torch.arange(samples, device=device, dtype=torch.float32)
    t = near[:, None] + length[:, None] * (steps + offset) / samples  # (R, S)
    delta = (length / samples)[:, None]
    points = origins[:, None, :] + t[..., None] * dirs[:, None, :]
    keep = grid.occupied(points.reshape(-1, 3)) & (length > 0).repeat_interleave(samples)
    index = keep.nonzero().squeeze(1)
    ray_of = torch.div(index, samples, rounding_mode="floor")
    flat_points = points.reshape(-1, 3)[index]

    with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        out = field(flat_points)
        needs_gradient = settings.orientation or settings.normal_consistency or settings.gradient_shading
        grad_normals = field.gradient_normals(flat_points) if needs_gradient and index.numel() else None

    sigma = torch.zeros(rays * samples, device=device, dtype=torch.float32)
    sigma = sigma.index_put((index,), out["sigma"].float()).view(rays, samples)
    alpha = 1.0 - torch.exp(-sigma * delta)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], dim=1), dim=1)
    weights = (alpha * transmittance[:, :-1]).reshape(-1)[index]  # (K,) for the kept samples only

    if light_dirs is None:
        light_dirs = torch.zeros(batch, 3, device=device)
    light = light_dirs.to(device).float()[torch.div(ray_of, height * width, rounding_mode="floor")]
    normals = grad_normals if settings.gradient_shading and grad_normals is not None else out["normals"]
    colour = shade(settings.shading, out["albedo"].float(), normals.float(), light, settings.ambient)
    rgb = torch.zeros(rays, 3, device=device).index_add(0, ray_of, weights[:, None] * colour)
    opacity = torch.zeros(rays, device=device).index_add(0, ray_of, weights)
    if background_colours is None:
        bg = background(dirs.view(batch, -1, 3), generator=generator, training=settings.perturb).reshape(-1, 3)
    else:
        bg = background_colours.to(device).float().repeat_interleave(height * width, dim=0)
    rgb = rgb + (1.0 - opacity[:, None]) * bg

    orientation = consistency = entropy = torch.zeros((), device=device)
    if settings.entropy and weights.numel():
        entropy = weight_entropy(weights)
    if grad_normals is not None and settings.orientation:
        orientation = orientation_penalty(grad_normals.float(), dirs[ray_of], weights, rays)
    if grad_normals is not None and settings.normal_consistency:
        error = ((out["normals"].float() - grad_normals.float()) ** 2).sum(-1)
        consistency = (weights.detach() * error).sum() / rays

    image = rgb.view(batch, height, width, 3).permute(0, 3, 1, 2)
    return RenderOutput(image=image, opacity=opacity.view(batch, 1, height, width), entropy=entropy,
                        orientation=orientation,
                        normal_consistency=consistency, samples_evaluated=int(index.numel()))
