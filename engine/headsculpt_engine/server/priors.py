"""Uploaded head priors: decoding the mesh arrays (never pickles), validation, and storage.

A prior lives in `DATA/priors/<prior_id>/`: `info.json` (what `GET /v1/priors/{id}` answers) and
`prior/` (the HeadPrior as `HeadPrior.save` writes it, landmarks included, so jobs never detect
them again). The id is a hash of the arrays: the same mesh uploaded twice is the same prior. An
upload is checked and built in `DATA/priors/.staging-*/` (see uploads.py), removed whatever the
outcome, and any left by a crash are removed at the next start.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .schemas import LandmarkStatus, PriorInfo, PriorUpload

log = logging.getLogger("headsculpt.server")

MAX_FACES = 2_000_000
LANDMARK_COUNT = 478
# Metres: a head is about 0.25 m. Far beyond this, float32 cross products overflow and every face
# looks degenerate, so such coordinates are refused up front with the reason.
MAX_COORDINATE = 1.0e4


class PriorTooLarge(ValueError):
    """The mesh is over the server's size limit (answered with 413)."""


class BadPrior(ValueError):
    """The arrays do not describe a triangle mesh (answered with 422)."""


@dataclass
class BuiltPrior:
    """What building a prior reports back: FLAME topology or not, and landmarks found on it."""

    is_flame: bool
    landmark_count: int


# build(vertices, faces, landmark_file or None, out_dir, keypoint_file=None, detect_landmarks=True) -> BuiltPrior;
# writes the prior into out_dir.
BuildPrior = Callable[..., BuiltPrior]


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
    reach = float(np.abs(vertices).max())
    if reach > MAX_COORDINATE:
        raise BadPrior(f"Vertex coordinates reach {reach:.3g}; the prior is expected in metres (a head is "
                       f"about 0.25 m, coordinates within +-{MAX_COORDINATE:g}): apply the object's scale "
                       "or move it near the origin, then upload it again.")
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


def prior_id_of(vertices: np.ndarray, faces: np.ndarray, landmark_indices: list[int] | None,
                keypoints: dict | None = None, detect_landmarks: bool = True) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(vertices, "<f4").tobytes())
    digest.update(np.ascontiguousarray(faces, "<i4").tobytes())
    digest.update(json.dumps(landmark_indices).encode())
    if keypoints is not None or not detect_landmarks:  # added only then: earlier priors keep their ids
        digest.update(json.dumps([keypoints, detect_landmarks], sort_keys=True).encode())
    return digest.hexdigest()[:24]


def build_engine_prior(vertices: np.ndarray, faces: np.ndarray, landmark_file: Path | None,
                       out_dir: Path, keypoint_file: Path | None = None, detect_landmarks: bool = True,
                       sdf_resolution: int | None = None) -> BuiltPrior:
    """The real builder: the engine's prior loader (validation, normalisation, landmark detection).
    Its cache goes in a folder beside `out_dir` (the upload's staging folder), dropped after the
    build: the saved prior holds the grid and landmarks, so nothing is written outside the data folder.
    `sdf_resolution`: the grid's samples per axis (None: the engine's default; tests build coarser)."""
    from ..prior import MeshArrays, load_prior
    from ..prior.keypoints import read_keypoint_file

    keypoints = read_keypoint_file(keypoint_file) if keypoint_file is not None else None
    with tempfile.TemporaryDirectory(prefix="cache-", dir=out_dir.parent) as cache:
        prior = load_prior(MeshArrays(vertices, faces), landmark_file=landmark_file, cache_root=Path(cache),
                           keypoints=keypoints, detect_landmarks=detect_landmarks,
                           **({} if sdf_resolution is None else {"sdf_resolution": sdf_resolution}))
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


def _landmark_status(count: int, detect: bool = True) -> LandmarkStatus:
    if not count and not detect:
        return LandmarkStatus(status="missing", count=0, message=(
            "Landmarks were left out on request: jobs on this prior need \"landmarks\": \"none\" (no landmark "
            "control: expect weaker view consistency)."))
    if count == LANDMARK_COUNT:
        return LandmarkStatus(status="found", count=count, message="All 478 face landmarks were found.")
    if count:
        return LandmarkStatus(status="found", count=count, message=(
            f"{count} of 478 face landmarks were found; the rest are left out of the landmark map."))
    return LandmarkStatus(status="missing", count=0, message=(
        "No face landmarks were found on this mesh: make sure the face looks along +Z (the add-on's "
        "-Y in Blender), or upload FLAME landmark indices; without them guidance has no face layout."))


# prepare(staging, priors_root) -> outcome: checks and builds an upload (uploads.UploadRunner.run).
Prepare = Callable[[Path, Path], dict[str, Any]]


def _folder_bytes(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in folder.rglob("*") if entry.is_file() and not entry.is_symlink())


class PriorStore:
    """Priors in `DATA/priors/`, at most `max_bytes` of them: beyond that the least recently used
    (uploaded again or named by a job) go, except those queued or running jobs still need."""

    def __init__(self, data_dir: Path, prepare: Prepare, max_bytes: int,
                 in_use: Callable[[], set[str]] = set):
        self.root = Path(data_dir) / "priors"
        self.root.mkdir(parents=True, exist_ok=True)
        self.prepare, self.max_bytes, self.in_use = prepare, max_bytes, in_use
        for leftover in self.root.glob(".staging-*"):  # an upload a crash or kill interrupted
            shutil.rmtree(leftover, ignore_errors=True)

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

    def touch(self, prior_id: str) -> None:
        """Mark a prior used now (its info.json's time orders the eviction)."""
        if self.prior_dir(prior_id) is not None:
            os.utime(self.root / prior_id / "info.json")

    def add(self, body: bytes) -> PriorInfo:
        """Check and build the upload in `body` (raw JSON) out of process; the same arrays again are
        the same prior, under the name given this time."""
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            (staging / "upload.json").write_bytes(body)
            del body
            outcome = self.prepare(staging, self.root)
            status = outcome["status"]
            if status == 413:
                raise PriorTooLarge(outcome["detail"])
            if status not in (200, 201):
                raise BadPrior(outcome["detail"])
            prior_id = outcome["prior_id"]
            if status == 201:
                info = PriorInfo(prior_id=prior_id, name=outcome["name"], vertex_count=outcome["vertex_count"],
                                 face_count=outcome["face_count"], is_flame=outcome["is_flame"],
                                 landmarks=_landmark_status(outcome["landmark_count"],
                                                            outcome.get("detect_landmarks", True)),
                                 landmarks_requested=outcome.get("detect_landmarks", True))
                (staging / "info.json").write_text(info.model_dump_json(indent=2))
                final = self.root / f".staging-ready-{uuid.uuid4().hex}"
                os.mkdir(final)  # only the prior and its info.json move into place
                for keep in ("prior", "info.json"):
                    os.rename(staging / keep, final / keep)
                try:
                    os.rename(final, self.root / prior_id)
                except OSError:  # a concurrent upload of the same mesh won the race; theirs is identical
                    shutil.rmtree(final, ignore_errors=True)
            self._rename(prior_id, outcome["name"])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.touch(prior_id)
        self._evict(keep=prior_id)
        info = self.info(prior_id)
        if info is None:
            raise BadPrior("The prior was deleted while this upload was being checked; upload it again.")
        return info

    def _rename(self, prior_id: str, name: str) -> None:
        info = self.info(prior_id)
        if info is not None and info.name != name:
            path = self.root / prior_id / "info.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(info.model_copy(update={"name": name}).model_dump_json(indent=2))
            os.replace(tmp, path)

    def delete(self, prior_id: str) -> bool:
        """Remove a prior; False when queued or running jobs still need it."""
        if prior_id in self.in_use():
            return False
        folder = self.root / prior_id
        # Out of the way first (atomic), so no request sees half a prior; then removed.
        doomed = self.root / f".staging-deleted-{uuid.uuid4().hex}"
        try:
            os.rename(folder, doomed)
        except OSError:
            return True  # gone already
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def _evict(self, keep: str) -> None:
        """Least recently used first, until the priors fit `max_bytes` (the newest always stays)."""
        entries = []
        for folder in self.root.iterdir():
            if folder.name.startswith(".") or not (folder / "info.json").is_file():
                continue
            entries.append((os.stat(folder / "info.json").st_mtime, folder.name, _folder_bytes(folder)))
        total = sum(size for _, _, size in entries)
        needed = self.in_use() | {keep}
        for _, prior_id, size in sorted(entries):
            if total <= self.max_bytes:
                break
            if prior_id not in needed and self.delete(prior_id):
                log.info("prior %s evicted: the priors exceed --prior-cache-mb", prior_id)
                total -= size
