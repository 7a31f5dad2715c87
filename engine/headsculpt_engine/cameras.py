"""Cameras shared by every renderer (NeRF, rasteriser, landmark maps) and by the guidance.

Conventions, used everywhere in the engine:

- World = the engine's normalised canonical frame: +Y up, the face looks along +Z.
- Orbit angles (HeadSculpt Table 2): `polar` in degrees measured from +Y (90 = level with the head),
  `azimuth` in degrees, 0 = in front of the face (+Z), 90 = on +X (the head's own left side),
  180 = behind. Camera position = radius * (sin(polar) sin(azimuth), cos(polar), sin(polar) cos(azimuth)).
- `c2w` is camera-to-world in the OpenGL convention: the camera looks along its -Z, +Y is up, +X right.
- Pixels: x to the right, y down, row 0 at the top; pixel (i, j) covers [i, i+1) x [j, j+1), its centre
  is at (i + 0.5, j + 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

ViewName = Literal["front", "side", "back"]


@dataclass
class CameraSampling:
    """Random cameras for training (HeadSculpt Table 2)."""

    radius: tuple[float, float] = (1.0, 1.5)
    polar: tuple[float, float] = (20.0, 110.0)
    azimuth: tuple[float, float] = (0.0, 360.0)
    fov_y: tuple[float, float] = (30.0, 50.0)
    # |azimuth| below this is a front view; within this of 180 a back view; the rest side views.
    front_half_angle: float = 35.0
    back_half_angle: float = 35.0


def view_name(azimuth_deg: float, front_half_angle: float = 35.0, back_half_angle: float = 35.0) -> ViewName:
    """Which view-dependent prompt suffix an azimuth gets."""
    a = (azimuth_deg + 180.0) % 360.0 - 180.0  # to [-180, 180)
    if abs(a) < front_half_angle:
        return "front"
    if abs(abs(a) - 180.0) < back_half_angle:
        return "back"
    return "side"


@dataclass
class Cameras:
    """A batch of pinhole cameras of one image size."""

    c2w: "torch.Tensor"  # (B, 4, 4)
    fov_y: "torch.Tensor"  # (B,) radians, vertical field of view
    width: int
    height: int
    azimuth: "torch.Tensor"  # (B,) degrees
    polar: "torch.Tensor"  # (B,) degrees
    radius: "torch.Tensor"  # (B,)
    near: float = 0.05
    far: float = 10.0
    front_half_angle: float = field(default=35.0)
    back_half_angle: float = field(default=35.0)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> "torch.device":
        return self.c2w.device

    def to(self, device) -> "Cameras":
        return self._map(lambda t: t.to(device))

    def __getitem__(self, index) -> "Cameras":
        import torch

        if isinstance(index, int):
            index = slice(index, index + 1)
        elif isinstance(index, (list, tuple)):
            index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        return self._map(lambda t: t[index])

    def with_size(self, width: int, height: int) -> "Cameras":
        """The same cameras rendering at another resolution (same field of view)."""
        out = self._map(lambda t: t)
        out.width, out.height = width, height
        return out

    def _map(self, fn) -> "Cameras":
        return Cameras(c2w=fn(self.c2w), fov_y=fn(self.fov_y), width=self.width, height=self.height,
                       azimuth=fn(self.azimuth), polar=fn(self.polar), radius=fn(self.radius),
                       near=self.near, far=self.far, front_half_angle=self.front_half_angle,
                       back_half_angle=self.back_half_angle)

    # --- geometry -------------------------------------------------------------------------------

    def focal(self) -> "torch.Tensor":
        """(B,) focal length in pixels (square pixels)."""
        import torch

        return 0.5 * self.height / torch.tan(0.5 * self.fov_y)

    def intrinsics(self) -> "torch.Tensor":
        """(B, 3, 3) pinhole matrix for a y-down image (principal point at the image centre)."""
        import torch

        f = self.focal()
        k = torch.zeros(len(self), 3, 3, dtype=self.c2w.dtype, device=self.device)
        k[:, 0, 0] = f
        k[:, 1, 1] = f
        k[:, 0, 2] = 0.5 * self.width
        k[:, 1, 2] = 0.5 * self.height
        k[:, 2, 2] = 1.0
        return k

    def w2c(self) -> "torch.Tensor":
        """(B, 4, 4) world-to-camera (rigid inverse of c2w)."""
        import torch

        rot = self.c2w[:, :3, :3]
        trans = self.c2w[:, :3, 3:]
        out = torch.zeros_like(self.c2w)
        out[:, :3, :3] = rot.transpose(1, 2)
        out[:, :3, 3:] = -rot.transpose(1, 2) @ trans
        out[:, 3, 3] = 1.0
        return out

    def projection(self) -> "torch.Tensor":
        """(B, 4, 4) OpenGL projection (camera -> clip), clip y up, as nvdiffrast expects."""
        import torch

        f = self.focal()
        n, fa = self.near, self.far
        p = torch.zeros(len(self), 4, 4, dtype=self.c2w.dtype, device=self.device)
        p[:, 0, 0] = 2.0 * f / self.width
        p[:, 1, 1] = 2.0 * f / self.height
        p[:, 2, 2] = -(fa + n) / (fa - n)
        p[:, 2, 3] = -2.0 * fa * n / (fa - n)
        p[:, 3, 2] = -1.0
        return p

    def mvp(self) -> "torch.Tensor":
        """(B, 4, 4) world -> clip."""
        return self.projection() @ self.w2c()

    def project(self, points: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """Project world points (N, 3) or (B, N, 3) to pixels.

        Returns `xy` (B, N, 2) in pixel units (x right, y down, pixel centres at +0.5) and `depth`
        (B, N), the distance along the viewing axis (positive in front of the camera).
        """
        if points.dim() == 2:
            points = points.unsqueeze(0).expand(len(self), -1, -1)
        w2c = self.w2c()
        cam = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
        depth = -cam[..., 2]
        f = self.focal()[:, None]
        safe = depth.clamp_min(1e-8)
        x = f * cam[..., 0] / safe + 0.5 * self.width
        y = -f * cam[..., 1] / safe + 0.5 * self.height
        import torch

        return torch.stack([x, y], dim=-1), depth

    def rays(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Ray origins and unit directions through every pixel centre, each (B, H, W, 3)."""
        import torch

        dev, dt = self.device, self.c2w.dtype
        js, is_ = torch.meshgrid(torch.arange(self.height, device=dev, dtype=dt) + 0.5,
                                 torch.arange(self.width, device=dev, dtype=dt) + 0.5, indexing="ij")
        f = self.focal()[:, None, None]
        dirs_cam = torch.stack([(is_ - 0.5 * self.width).expand(len(self), -1, -1) / f,
                                -(js - 0.5 * self.height).expand(len(self), -1, -1) / f,
                                -torch.ones(len(self), self.height, self.width, device=dev, dtype=dt)], dim=-1)
        dirs = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.c2w[:, None, None, :3, 3].expand_as(dirs)
        return origins, dirs

    def view_names(self) -> list[ViewName]:
        return [view_name(float(a), self.front_half_angle, self.back_half_angle) for a in self.azimuth.tolist()]

    def positions(self) -> "torch.Tensor":
        return self.c2w[:, :3, 3]


def look_at(eye: "torch.Tensor", target: "torch.Tensor", up: "torch.Tensor | None" = None) -> "torch.Tensor":
    """(B, 4, 4) OpenGL camera-to-world matrices looking from `eye` (B, 3) at `target` (B, 3)."""
    import torch

    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = target - eye
    forward = forward / forward.norm(dim=-1, keepdim=True)
    right = torch.cross(forward, up, dim=-1)
    # Looking straight up or down: any right vector perpendicular to forward will do.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt = torch.cross(forward, torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(eye), dim=-1)
    right = torch.where(degenerate, alt, right)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return c2w


def orbit_cameras(azimuth_deg, polar_deg=90.0, radius=1.25, fov_y_deg=40.0, width: int = 64, height: int = 64,
                  sampling: CameraSampling | None = None, device=None) -> Cameras:
    """Cameras on a sphere around the origin looking at it; scalars broadcast to the batch."""
    import torch

    azimuth = torch.as_tensor(azimuth_deg, dtype=torch.float32, device=device).reshape(-1)
    batch = azimuth.shape[0]

    def full(value) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1).expand(batch).clone()

    polar, radius_t, fov = full(polar_deg), full(radius), full(fov_y_deg)
    th, ph = torch.deg2rad(polar), torch.deg2rad(azimuth)
    eye = radius_t[:, None] * torch.stack([torch.sin(th) * torch.sin(ph), torch.cos(th),
                                           torch.sin(th) * torch.cos(ph)], dim=-1)
    c2w = look_at(eye, torch.zeros_like(eye))
    sampling = sampling or CameraSampling()
    return Cameras(c2w=c2w, fov_y=torch.deg2rad(fov), width=width, height=height, azimuth=azimuth,
                   polar=polar, radius=radius_t, front_half_angle=sampling.front_half_angle,
                   back_half_angle=sampling.back_half_angle)


def sector_bounds(sampling: CameraSampling) -> list[tuple[float, float]]:
    """Azimuth intervals (degrees, increasing) of the front, left, back and right sectors."""
    f, b = sampling.front_half_angle, sampling.back_half_angle
    return [(-f, f), (f, 180.0 - b), (180.0 - b, 180.0 + b), (180.0 + b, 360.0 - f)]


def sample_cameras(sampling: CameraSampling, batch: int, width: int, height: int,
                   generator: "torch.Generator | None" = None, device=None) -> Cameras:
    """Random training cameras; with batch 4, one azimuth per sector (front, left, back, right)."""
    import torch

    def uniform(lo: float, hi: float, n: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    if batch == 4:
        azimuth = torch.cat([uniform(lo, hi, 1) for lo, hi in sector_bounds(sampling)])
    else:
        azimuth = uniform(*sampling.azimuth, batch)
    azimuth = torch.remainder(azimuth, 360.0)
    polar = uniform(*sampling.polar, batch)
    radius = uniform(*sampling.radius, batch)
    fov = uniform(*sampling.fov_y, batch)
    return orbit_cameras(azimuth, polar, radius, fov, width, height, sampling=sampling, device=device)


def preview_cameras(width: int, height: int, device=None) -> Cameras:
    """Fixed front, side (left) and back views for previews and evaluation."""
    return orbit_cameras([0.0, 90.0, 180.0], polar_deg=85.0, radius=1.3, fov_y_deg=40.0,
                         width=width, height=height, device=device)


def turntable_cameras(count: int, width: int, height: int, device=None) -> Cameras:
    """`count` views evenly around the head, starting in front."""
    return orbit_cameras([360.0 * i / count for i in range(count)], polar_deg=85.0, radius=1.3, fov_y_deg=40.0,
                         width=width, height=height, device=device)



# The turntable: views all around the head, a little above it, far enough that the whole normalised head
# (radius 0.7) fits the 40-degree view with a margin. Exported previews and `headsculpt eval` use it.
TURNTABLE_POLAR_DEG = 85.0
TURNTABLE_RADIUS = 2.1
TURNTABLE_FOV_DEG = 40.0


def turntable_cameras(count: int, size: int, device=None) -> Cameras:
    """`count` cameras evenly spaced in azimuth, starting at the front."""
    return orbit_cameras([360.0 * i / count for i in range(count)], polar_deg=TURNTABLE_POLAR_DEG,
                         radius=TURNTABLE_RADIUS, fov_y_deg=TURNTABLE_FOV_DEG, width=size, height=size,
                         device=device)
