"""Cameras of a dataset and their EG3D labels.

EG3D's `dataset.json` gives each image 25 numbers: the camera-to-world matrix (4x4, row-major) in the
OpenCV convention (the camera looks along its +Z, +Y points down the image, +X right), then the 3x3
intrinsics normalised by the image size (focal lengths and principal point divided by width and
height, so a centred camera has cx = cy = 0.5). Its world frame is ours: +Y up, the face looks along
+Z (EG3D's frontal FFHQ camera sits on +Z). The engine's cameras are OpenGL (looking along -Z, +Y up),
so the label flips the camera's Y and Z axes. World units are the engine's normalised frame (the head
fits a sphere of radius 0.7 at the origin); see docs/styleavatar3d.md for the trainer's ray range.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..cameras import CameraSampling, sample_cameras

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras

LABEL_SIZE = 25
# Per-image camera streams: image i draws from seed * SEED_STRIDE + i, so image i's camera does not depend
# on how many images the dataset has (a larger --views extends a dataset instead of redrawing it).
SEED_STRIDE = 1_000_003


def image_seed(seed: int, index: int) -> int:
    return seed * SEED_STRIDE + index


def dataset_camera(sampling: CameraSampling, seed: int, index: int, size: int) -> "Cameras":
    """Image `index`'s camera, drawn on the training ranges (HeadSculpt Table 2), square `size` pixels."""
    import torch

    generator = torch.Generator().manual_seed(image_seed(seed, index))
    return sample_cameras(sampling, 1, size, size, generator=generator)


def opencv_cam2world(cameras: "Cameras") -> "torch.Tensor":
    """(B, 4, 4) camera-to-world in the OpenCV convention: the OpenGL one with its Y and Z axes flipped."""
    import torch

    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=cameras.c2w.dtype, device=cameras.device))
    return cameras.c2w @ flip


def eg3d_labels(cameras: "Cameras") -> list[list[float]]:
    """One 25-number EG3D label per camera: 16 flattened cam2world entries, 9 normalised intrinsics."""
    import torch

    intrinsics = cameras.intrinsics().clone()
    intrinsics[:, 0] /= cameras.width
    intrinsics[:, 1] /= cameras.height
    labels = torch.cat([opencv_cam2world(cameras).flatten(1), intrinsics.flatten(1)], dim=1)
    return [[float(v) for v in row] for row in labels.double().cpu()]
