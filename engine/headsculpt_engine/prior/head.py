"""`HeadPrior`: the shape prior every stage trains on, and how it is loaded and cached.

Loading validates and normalises the mesh, then takes the signed-distance grid and the landmark
embedding from the cache (`paths.cache_dir()/priors/<content hash>/`, or a folder the caller names) or computes and stores them.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import InputError
from .density import DEFAULT_SHARPNESS, density_prior
from .frame import PriorTransform
from .keypoints import keypoint_embedding, upright_turn
from .landmark_render import landmark_visibility, render_landmark_maps
from .landmarks import LandmarkEmbedding, embedding_from_vertex_indices, read_landmark_file
from .meshio import MeshArrays, clean_mesh, load_mesh_file
from .rig import PriorRig, read_gltf_rig
from .sdf import GRID_BOUND, GRID_RESOLUTION, SDFGrid, compute_sdf_grid

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras

# Bump when anything cached per prior changes meaning (grid layout, detection method).
CACHE_VERSION = "4"  # 2: multi-view fusion with rejection, orientation search; 3: skin-toned detection renders; 4: landmarks into folds
FLAME_VERTEX_COUNTS = (5023,)
FLAME_FACE_COUNTS = (9976, 10034)  # open mouth; closed mouth


@dataclass
class HeadPrior:
    """A head mesh in the engine's normalised frame, with what training needs from it: signed
    distance and the density prior (Eq. 3), landmarks and landmark maps, and the way back to the
    mesh's own (canonical) coordinates."""

    vertices: np.ndarray  # (N, 3) float32, normalised frame
    faces: np.ndarray  # (M, 3) int32
    transform: PriorTransform
    content_hash: str
    is_flame: bool
    landmarks: LandmarkEmbedding | None
    # The grid is built (or read from the cache) on first use: landmark work never needs it.
    sdf_source: Callable[[], SDFGrid] = field(repr=False)
    # A .glb prior's skin and morph targets, for the avatar to carry (prior/rig.py); None otherwise.
    rig: PriorRig | None = field(default=None, repr=False)
    _sdf_grid: SDFGrid | None = field(default=None, init=False, repr=False)

    @property
    def sdf_grid(self) -> SDFGrid:
        if self._sdf_grid is None:
            self._sdf_grid = self.sdf_source()
        return self._sdf_grid

    # --- geometry -------------------------------------------------------------------------------

    def signed_distance(self, points: "torch.Tensor") -> "torch.Tensor":
        """Signed distance (..., 3) -> (...) in the normalised frame, negative inside (grid lookup)."""
        return self.sdf_grid(points)

    def density(self, points: "torch.Tensor", a: float = DEFAULT_SHARPNESS) -> "torch.Tensor":
        """sigma_bar of Eq. 3 at `points` (..., 3); finite and >= 0."""
        return density_prior(self.signed_distance(points), a)

    def canonical_vertices(self) -> np.ndarray:
        return self.transform.to_canonical(self.vertices.astype(np.float64))

    # --- landmarks ------------------------------------------------------------------------------

    def landmark_points(self) -> np.ndarray:
        """(478, 3) landmarks in the normalised frame, NaN rows where missing (or all NaN without an embedding)."""
        if self.landmarks is None:
            return np.full((478, 3), np.nan)
        return self.landmarks.points(self.vertices, self.faces)

    def landmark_visibility(self, cameras: "Cameras") -> "torch.Tensor":
        """(B, 478) bool: found and not behind the head, by comparison with the rasterised depth."""
        return landmark_visibility(self.vertices, self.faces, self.landmark_points(), cameras)

    def landmark_maps(self, cameras: "Cameras", policy: str = "none") -> "torch.Tensor":
        """(B, 3, H, W) landmark maps in [0, 1] at the cameras' size; see `landmark_render`."""
        points = None if self.landmarks is None else self.landmark_points()
        return render_landmark_maps(self.vertices, self.faces, points, cameras, policy)

    # --- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write everything needed to rebuild this prior without recomputation."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "mesh.npz", vertices=self.vertices, faces=self.faces)
        np.save(directory / "sdf_grid.npy", self.sdf_grid.values)
        if self.landmarks is not None:
            self.landmarks.save(directory / "landmarks.npz")
        if self.rig is not None:
            self.rig.save(directory)
        info = {"content_hash": self.content_hash, "is_flame": self.is_flame, "transform": self.transform.as_dict(),
                "sdf_bound": self.sdf_grid.bound, "cache_version": CACHE_VERSION}
        (directory / "prior.json").write_text(json.dumps(info, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "HeadPrior":
        directory = Path(directory)
        try:
            info = json.loads((directory / "prior.json").read_text())
            with np.load(directory / "mesh.npz", allow_pickle=False) as mesh:
                vertices, faces = mesh["vertices"].astype(np.float32), mesh["faces"].astype(np.int32)
            grid = np.load(directory / "sdf_grid.npy", allow_pickle=False)
            rig = PriorRig.load(directory)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"The saved head prior in {directory} is incomplete or damaged ({error}); "
                             "load the prior mesh again.") from error
        marks = directory / "landmarks.npz"
        return cls(vertices=vertices, faces=faces, transform=PriorTransform.from_dict(info["transform"]),
                   content_hash=info["content_hash"], is_flame=bool(info["is_flame"]),
                   landmarks=LandmarkEmbedding.load(marks) if marks.exists() else None,
                   sdf_source=lambda: SDFGrid(grid, info.get("sdf_bound", GRID_BOUND)), rig=rig)


# --- loading ----------------------------------------------------------------------------------------


def is_flame_topology(num_vertices: int, num_faces: int) -> bool:
    return num_vertices in FLAME_VERTEX_COUNTS and num_faces in FLAME_FACE_COUNTS


def content_hash(mesh: MeshArrays) -> str:
    digest = hashlib.sha256(f"headsculpt-prior-v{CACHE_VERSION}".encode())
    digest.update(np.ascontiguousarray(mesh.vertices, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(mesh.faces, dtype=np.int32).tobytes())
    return digest.hexdigest()[:24]


def prior_cache_dir(hash_: str, root: Path | None = None) -> Path:
    """Where a prior's grid and landmarks are cached: `root` (the server passes a folder inside its
    data folder) or the engine cache's `priors/`."""
    from ..paths import cache_dir

    return (root if root is not None else cache_dir() / "priors") / hash_


def _atomic_save(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file in the same folder, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _orientation_tag(transform: PriorTransform) -> str:
    """Cache-file suffix for the normalised frame's rotation ("" for the file's own axes)."""
    if not transform.is_rotated:
        return ""
    sign = {-1: "m", 0: "0", 1: "p"}
    return "_r" + "".join(sign[int(np.sign(round(x)))] for x in transform.rotation.reshape(-1))


def _cached_sdf(cache: Path, vertices: np.ndarray, faces: np.ndarray, resolution: int, transform: PriorTransform,
                say: Callable[[str], None]) -> np.ndarray:
    path = cache / f"sdf_grid_{resolution}{_orientation_tag(transform)}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    say(f"computing the signed-distance grid ({resolution}^3, winding-number sign)")
    grid = compute_sdf_grid(vertices, faces, resolution)
    _atomic_save(path, lambda p: np.save(p, grid))
    return grid


def _cache_mesh(cache: Path, vertices: np.ndarray, faces: np.ndarray, transform: PriorTransform) -> None:
    """The normalised mesh and its transform, so a prior can be rebuilt from its hash alone."""
    _atomic_save(cache / "mesh.npz", lambda p: np.savez(p, vertices=vertices, faces=faces, center=transform.center,
                                                       scale=np.float64(transform.scale), rotation=transform.rotation))


def _cached_detection(cache: Path, vertices: np.ndarray, faces: np.ndarray,
                      say: Callable[[str], None]) -> tuple[np.ndarray, LandmarkEmbedding]:
    """(rotation, embedding): the turn of the normalised mesh under which a face was found (the
    identity when it faces +Z with +Y up) and the landmarks on it, from the cache or detected
    (`orientation.py`: the search over orientations runs only when the mesh as given fails)."""
    from .detect import detect_landmarks
    from .orientation import detect_oriented

    path, turn_path = cache / "landmarks_detected.npz", cache / "orientation.json"
    if path.exists() and turn_path.exists():
        return np.asarray(json.loads(turn_path.read_text())["rotation"], dtype=np.float64), LandmarkEmbedding.load(path)
    rotation, embedding = detect_oriented(vertices, faces, lambda turned: detect_landmarks(turned, faces, progress=say), say)
    _atomic_save(turn_path, lambda p: p.write_text(json.dumps({"rotation": rotation.tolist()})))
    _atomic_save(path, embedding.save)
    return rotation, embedding


def load_prior(source: "str | Path | MeshArrays", landmark_file: "str | Path | None" = None,
               detect_landmarks: bool = True, progress: Callable[[str], None] | None = None,
               sdf_resolution: int = GRID_RESOLUTION, cache_root: Path | None = None,
               keypoints: "dict[str, np.ndarray] | None" = None) -> HeadPrior:
    """Load a head mesh (a path to OBJ/PLY/GLB, or `MeshArrays` in the canonical frame) as a prior.

    Landmarks: from `landmark_file` (a .npy of vertex indices) when given, else detected on renders
    when `detect_landmarks` (turning the head by an axis rotation when it does not face +Z with +Y
    up: the rotation joins the transform, so results still go back to the file's frame), else none;
    `keypoints` (guided landmarks, prior/keypoints.py: six named points in the mesh's own
    coordinates) come before both. `sdf_resolution`: grid samples per axis (coarser is quicker to
    build, for tests and previews). `cache_root`: see `prior_cache_dir`. Raises InputError for meshes that cannot serve as a prior.
    """
    say = progress or (lambda message: None)
    raw = source if isinstance(source, MeshArrays) else load_mesh_file(source)
    mesh = clean_mesh(raw)
    transform = PriorTransform.fit(mesh.vertices)
    vertices = transform.to_normalised(mesh.vertices.astype(np.float64)).astype(np.float32)
    # Guided landmarks first: bad keypoints are refused before anything is written. The keypoints also
    # tell which way the head faces: a head marked lying down or sideways is turned upright first.
    guided = None
    if keypoints is not None:
        turn = upright_turn({name: transform.to_normalised(point) for name, point in keypoints.items()})
        if not np.allclose(turn, np.eye(3)):
            transform = transform.rotated(turn)
            vertices = transform.to_normalised(mesh.vertices.astype(np.float64)).astype(np.float32)
        guided = keypoint_embedding(
            vertices, mesh.faces, {name: transform.to_normalised(point) for name, point in keypoints.items()})
    hash_ = content_hash(mesh)
    cache = prior_cache_dir(hash_, cache_root)
    cache.mkdir(parents=True, exist_ok=True)
    if guided is not None:
        landmarks = guided
    elif landmark_file is not None:
        # Indices refer to the mesh as given; cleaning keeps vertices, so they still apply.
        landmarks = embedding_from_vertex_indices(read_landmark_file(landmark_file), mesh.faces, len(vertices))
    elif detect_landmarks:
        rotation, landmarks = _cached_detection(cache, vertices, mesh.faces, say)
        if not np.allclose(rotation, np.eye(3)):
            transform = transform.rotated(rotation)
            vertices = transform.to_normalised(mesh.vertices.astype(np.float64)).astype(np.float32)
    else:
        landmarks = None
    _cache_mesh(cache, vertices, mesh.faces, transform)
    rig = None if isinstance(source, MeshArrays) else read_gltf_rig(Path(source))
    return HeadPrior(vertices=vertices, faces=mesh.faces, transform=transform, content_hash=hash_,
                     is_flame=is_flame_topology(len(vertices), len(raw.faces)), landmarks=landmarks,
                     sdf_source=lambda: SDFGrid(_cached_sdf(cache, vertices, mesh.faces, sdf_resolution, transform, say)), rig=rig)
