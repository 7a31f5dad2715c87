"""The dataset loop: for image i, its camera (drawn from the seed and i alone), the source's landmark map
from that camera, the image from the source; images already written are skipped."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

from .cameras_eg3d import dataset_camera, eg3d_labels, image_seed
from .writer import DatasetWriter, ImageRecord

if TYPE_CHECKING:
    from ..cameras import CameraSampling, Cameras
    from .sources import PromptSource, RunSource


def image_record(index: int, source: "PromptSource | RunSource", cameras: "Cameras", seed: int) -> ImageRecord:
    return ImageRecord(index=index, prompt=source.prompt, view=cameras.view_names()[0],
                       label=eg3d_labels(cameras)[0], seed=seed, azimuth=float(cameras.azimuth[0]),
                       polar=float(cameras.polar[0]), radius=float(cameras.radius[0]),
                       fov_y=math.degrees(float(cameras.fov_y[0])), source=source.identity)


def build_dataset(sources: Sequence["PromptSource | RunSource"], writer: DatasetWriter, views: int, seed: int,
                  sampling: "CameraSampling", size: int, back_view_policy: str,
                  say: Callable[[str], None] = print) -> int:
    """Write `views` images (image i from source i mod len(sources)); the number of images in the folder.
    dataset.json is written even when the loop is interrupted, for the images made so far."""
    records: list[ImageRecord] = []
    try:
        for index in range(views):
            source = sources[index % len(sources)]
            cameras = dataset_camera(sampling, seed, index, size)
            record = image_record(index, source, cameras, image_seed(seed, index))
            records.append(record)
            step = f"[{index + 1}/{views}] {record.filename} ({record.view} view)"
            if writer.has(record):
                say(f"{step}: already there, skipped")
                continue
            maps = source.prior.landmark_maps(cameras, back_view_policy)
            image = source.image(cameras, maps, record.seed)
            condition = (maps[0].permute(1, 2, 0) * 255).round().byte().cpu().numpy()
            writer.write(record, image, condition)
            say(f"{step}: {record.prompt}")
    finally:
        count = writer.finish(records)
    return count
