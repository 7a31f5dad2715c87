"""Uploaded head priors: decoding the mesh arrays (never pickles), validation, and storage.

A prior lives in `DATA/priors/<prior_id>/`: `info.json` (what `GET /v1/priors/{id}` answers) and
`prior/` (the HeadPrior as `HeadPrior.save` writes it, landmarks included, so jobs never detect
them again). The id is a hash of the arrays: the same mesh uploaded twice is the same prior.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .schemas import LandmarkStatus, PriorInfo, PriorUpload

MAX_FACES = 2_000_000
LANDMARK_COUNT = 478


class PriorTooLarge(ValueError):
    """The mesh is over the server's size limit (answered with 413)."""


class BadPrior(ValueError):
    """The arrays do not describe a triangle mesh (answered with 422)."""


@dataclass
class BuiltPrior:
    """What building a prior reports back: FLAME topology or not, and landmarks found on it."""

    is_flame: bool
    landmark_count: int


# build(vertices, faces, landmark_file or None, out_dir) -> BuiltPrior; writes the prior into out_dir.
BuildPrior = Callable[[np.ndarray, np.ndarray, "Path | None", Path], BuiltPrior]


def decode_mesh(upload: PriorUpload) -> tuple[np.ndarray, np.ndarray]:
    """(vertices float32 (N,3), faces int32 (M,3)) from the base64 little-endian arrays."""
    if upload.face_count > MAX_FACES:
        raise PriorTooLarge(f"The mesh has {upload.face_count} faces; this server accepts at most "
                            f"{MAX_FACES}: decimate it first.")
    vertices = _decode_array("vertices_b64", upload.vertices_b64, upload.vertex_count, "<f4", "vertex_count")
    faces = _decode_array("faces_b64", upload.faces_b64, upload.face_count, "<i4", "face_count")
    if not np.isfinite(vertices).all():
        raise BadPrior("Some vertex coordinates are NaN or infinite; fix the mesh and upload it again.")
    if faces.min() < 0 or faces.max() >= upload.vertex_count:
        raise BadPrior(f"Face indices must lie in [0, {upload.vertex_count - 1}] (the vertex count); "
                       f"these span [{faces.min()}, {faces.max()}].")
    degenerate = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    if degenerate.all():
        raise BadPrior("Every face repeats a vertex, so the arrays are not a triangle mesh.")
    extent = vertices.max(axis=0) - vertices.min(axis=0)
    if np.count_nonzero(extent > 0) < 3:
        raise BadPrior("The vertices are flat or a single point; a head prior needs a 3D surface.")
    if upload.landmark_indices is not None and max(upload.landmark_indices) >= upload.vertex_count:
        raise BadPrior(f"landmark_indices must be vertex indices below {upload.vertex_count}.")
    return vertices, faces


def _decode_array(field: str, text: str, count: int, dtype: str, count_field: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadPrior(f"{field} is not valid base64.") from None
    expected = count * 3 * 4
    if len(raw) != expected:
        raise BadPrior(f"{field} holds {len(raw)} bytes but {count_field}={count} needs {expected} "
                       f"({count} x 3 little-endian {'float32' if 'f' in dtype else 'int32'} values).")
    return np.frombuffer(raw, dtype=dtype).reshape(count, 3).astype(dtype[1:])


def prior_id_of(vertices: np.ndarray, faces: np.ndarray, landmark_indices: list[int] | None) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(vertices, "<f4").tobytes())
    digest.update(np.ascontiguousarray(faces, "<i4").tobytes())
    digest.update(json.dumps(landmark_indices).encode())
    return digest.hexdigest()[:24]


def build_engine_prior(vertices: np.ndarray, faces: np.ndarray, landmark_file: Path | None,
                       out_dir: Path) -> BuiltPrior:
    """The real builder: the engine's prior loader (validation, normalisation, landmark detection)."""
    from ..prior import MeshArrays, load_prior

    prior = load_prior(MeshArrays(vertices, faces), landmark_file=landmark_file)
    prior.save(out_dir)
    found = int(np.isfinite(np.asarray(prior.landmark_points())).all(axis=-1).sum())
    return BuiltPrior(is_flame=bool(prior.is_flame), landmark_count=found)


def load_engine_prior(prior_dir: Path) -> Any:
    from ..prior import HeadPrior

    return HeadPrior.load(prior_dir)


def write_landmark_preview(prior_dir: Path, out_path: Path) -> Path:
    """The prior's landmark contact sheet (the prior area's renderer) as PNG, rendered once."""
    if not out_path.is_file():
        from PIL import Image

        from ..prior.preview import contact_sheet

        tmp = out_path.with_suffix(".tmp.png")
        Image.fromarray(contact_sheet(load_engine_prior(prior_dir))).save(tmp)
        tmp.replace(out_path)
    return out_path


def _landmark_status(count: int) -> LandmarkStatus:
    if count == LANDMARK_COUNT:
        return LandmarkStatus(status="found", count=count, message="All 478 face landmarks were found.")
    if count:
        return LandmarkStatus(status="found", count=count, message=(
            f"{count} of 478 face landmarks were found; the rest are left out of the landmark map."))
    return LandmarkStatus(status="missing", count=0, message=(
        "No face landmarks were found on this mesh: make sure the face looks along +Z (the add-on's "
        "-Y in Blender), or upload FLAME landmark indices; without them guidance has no face layout."))


class PriorStore:
    def __init__(self, data_dir: Path, build: BuildPrior = build_engine_prior):
        self.root = Path(data_dir) / "priors"
        self.root.mkdir(parents=True, exist_ok=True)
        self.build = build

    def prior_dir(self, prior_id: str) -> Path | None:
        """The saved HeadPrior folder of a known prior; None for an unknown or malformed id."""
        if not prior_id.isalnum():
            return None
        folder = self.root / prior_id
        return folder / "prior" if (folder / "info.json").is_file() else None

    def info(self, prior_id: str) -> PriorInfo | None:
        if self.prior_dir(prior_id) is None:
            return None
        return PriorInfo.model_validate_json((self.root / prior_id / "info.json").read_text())

    def add(self, upload: PriorUpload) -> PriorInfo:
        """Decode, validate and build the prior; uploading the same arrays again is a cheap no-op."""
        vertices, faces = decode_mesh(upload)
        prior_id = prior_id_of(vertices, faces, upload.landmark_indices)
        known = self.info(prior_id)
        if known is not None:
            return known
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            landmark_file = None
            if upload.landmark_indices is not None:
                # The engine's landmark-file format (as `--landmark-file`): 478 vertex indices in .npy.
                landmark_file = staging / "landmark_indices.npy"
                np.save(landmark_file, np.asarray(upload.landmark_indices, dtype=np.int64))
            built = self.build(vertices, faces, landmark_file, staging / "prior")
            info = PriorInfo(prior_id=prior_id, name=upload.name, vertex_count=len(vertices),
                             face_count=len(faces), is_flame=built.is_flame,
                             landmarks=_landmark_status(built.landmark_count))
            (staging / "info.json").write_text(info.model_dump_json(indent=2))
            try:
                os.rename(staging, self.root / prior_id)
            except OSError:  # a concurrent upload of the same mesh won the race; theirs is identical
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return info
