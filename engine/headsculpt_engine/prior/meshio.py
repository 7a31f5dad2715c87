"""Loading a head mesh (OBJ, PLY, GLB or raw arrays) and checking that it can serve as a prior.

Whatever comes in leaves as a clean triangle soup: float32 vertices, int32 faces, no degenerate or
duplicate triangles. Problems a user can fix raise `InputError` with a sentence that says what to do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

MIN_FACES = 100
MAX_FACES = 2_000_000
MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf")


@dataclass
class MeshArrays:
    """A mesh as plain arrays: vertices (N, 3) float, faces (M, K) integer polygons (K >= 3)."""

    vertices: np.ndarray
    faces: np.ndarray


def load_mesh_file(path: str | Path) -> MeshArrays:
    """Read a mesh file with trimesh, keeping the file's vertex order (FLAME indices depend on it)."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise InputError(f"The prior mesh file {path} does not exist; give the path of an OBJ, PLY or GLB file.")
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(f"The prior mesh {path.name} has an unsupported format; export it as OBJ, PLY or GLB.")
    # maintain_order: the OBJ loader otherwise splits vertices along UV seams and reorders them.
    kwargs = {"maintain_order": True} if suffix == ".obj" else {}
    try:
        loaded = trimesh.load(str(path), process=False, force="mesh", **kwargs)
    except Exception as error:  # trimesh raises many types for unreadable files
        raise InputError(f"Could not read the prior mesh {path.name} ({error}); check that it is a valid "
                         "OBJ, PLY or GLB file.") from error
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))))
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3), dtype=np.int64)))
    return MeshArrays(vertices=vertices, faces=faces)


def triangulate(faces: np.ndarray) -> np.ndarray:
    """Fan-triangulate (M, K) polygons into (M * (K - 2), 3) triangles."""
    k = faces.shape[1]
    if k == 3:
        return faces
    fans = [faces[:, [0, i, i + 1]] for i in range(1, k - 1)]
    return np.stack(fans, axis=1).reshape(-1, 3)


def clean_mesh(mesh: MeshArrays) -> MeshArrays:
    """Validate `mesh` and return it triangulated, without degenerate or duplicate faces.

    Raises InputError for an empty mesh, non-finite coordinates, out-of-range face indices, or a face
    count outside [MIN_FACES, MAX_FACES] (after cleaning for the lower bound).
    """
    vertices = np.asarray(mesh.vertices)
    faces = np.asarray(mesh.faces)
    if vertices.size == 0 or faces.size == 0:
        raise InputError("The prior mesh is empty (no vertices or no faces); select a head mesh with geometry.")
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise InputError(f"The prior's vertices have shape {vertices.shape}; they must be an (N, 3) array.")
    if faces.ndim != 2 or faces.shape[1] < 3:
        raise InputError(f"The prior's faces have shape {faces.shape}; they must be an (M, 3) array of vertex indices.")
    if not np.issubdtype(faces.dtype, np.integer):
        if not np.all(np.isfinite(faces)) or np.any(faces != np.round(faces)):
            raise InputError("The prior's faces must be whole vertex indices; send them as an integer array.")
        faces = faces.astype(np.int64)
    if not np.all(np.isfinite(vertices)):
        bad = int((~np.isfinite(vertices)).any(axis=1).sum())
        raise InputError(f"The prior mesh has {bad} vertices with non-finite coordinates (NaN or infinity); "
                         "fix or delete them and try again.")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InputError(f"The prior's faces index vertices out of range (indices {int(faces.min())}..{int(faces.max())} "
                         f"with {len(vertices)} vertices); the mesh is corrupt, re-export it.")
    faces = triangulate(faces)
    if len(faces) > MAX_FACES:
        raise InputError(f"The prior mesh has {len(faces):,} faces, more than the {MAX_FACES:,} allowed; "
                         "decimate it (Blender's Decimate modifier) and try again.")
    vertices = vertices.astype(np.float32)
    faces = _drop_degenerate_and_duplicates(vertices, faces.astype(np.int64))
    if len(faces) < MIN_FACES:
        raise InputError(f"The prior mesh has only {len(faces)} usable faces, fewer than {MIN_FACES}; "
                         "use a head mesh with more detail.")
    return MeshArrays(vertices=vertices, faces=faces.astype(np.int32))


def _drop_degenerate_and_duplicates(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    tri = vertices[faces].astype(np.float64)
    doubled_area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    scale = float(np.ptp(vertices, axis=0).max()) or 1.0
    flat = doubled_area <= 1e-12 * scale * scale
    faces = faces[~(repeated | flat)]
    # Duplicates: the same three vertices in any order; keep the first occurrence.
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    return faces[np.sort(first)]
