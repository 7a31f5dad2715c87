"""Mesh hygiene before the UV unwrap and texture bake: loose floaters removed, quadric decimation to
a face budget, and a watertight check, with the figures the run record keeps.

DMTet keeps every marching-tetrahedra triangle (about 190k at the `paper` settings); the authors'
code decimates the exported mesh to 50k faces, which `export.target_faces` follows. Decimation is
Garland-Heckbert quadric edge collapse (fast-simplification, a wrapper of Fast-Quadric-Mesh-
Simplification). Loose components are judged by their size against the whole mesh: a component
whose bounding-box diagonal is below `export.min_component_share` of the mesh's is a floater (the
largest component always stays). That rule is this project's choice; the papers state none.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class CleanMesh:
    """The cleaned mesh and what was done to it (the `mesh` entry of avatar.json and run.json)."""

    vertices: np.ndarray  # (V, 3) float32, same frame as the input
    faces: np.ndarray  # (F, 3) int64
    report: dict[str, Any] = field(default_factory=dict)


def component_labels(faces: np.ndarray) -> np.ndarray:
    """Per face, the id of its connected component: faces joined through shared edges. A piece that
    touches the rest at a single vertex (a bow-tie) counts as loose, as glTF viewers and trimesh's own
    `split` see it."""
    import trimesh

    f = np.asarray(faces, dtype=np.int64)
    if len(f) == 0:
        return np.zeros(0, dtype=np.int64)
    adjacency = trimesh.graph.face_adjacency(faces=f)
    return np.asarray(trimesh.graph.connected_component_labels(adjacency, node_count=len(f)), dtype=np.int64)


def drop_small_components(vertices: np.ndarray, faces: np.ndarray, min_share: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove components whose bounding-box diagonal is below `min_share` of the whole mesh's (never
    the largest one); returns compacted (vertices, faces, number removed)."""
    labels = component_labels(faces)
    count = int(labels.max()) + 1 if len(labels) else 0
    if count <= 1 or min_share <= 0:
        return vertices, faces, 0
    corners = vertices[faces].reshape(-1, 3)
    corner_label = np.repeat(labels, 3)
    lo = np.full((count, 3), np.inf)
    hi = np.full((count, 3), -np.inf)
    np.minimum.at(lo, corner_label, corners)
    np.maximum.at(hi, corner_label, corners)
    diagonal = np.linalg.norm(hi - lo, axis=1)
    whole = float(np.linalg.norm(corners.max(axis=0) - corners.min(axis=0)))
    keep_component = diagonal >= min_share * whole
    keep_component[np.bincount(labels).argmax()] = True
    kept, faces_kept = compact(vertices, faces[keep_component[labels]])
    return kept, faces_kept, int((~keep_component).sum())


def compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop vertices no face uses and renumber the faces."""
    used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
    return vertices[used], inverse.reshape(-1, 3).astype(np.int64)


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric edge-collapse decimation to at most `target_faces` faces (0, or a mesh already within
    the budget, is returned as it is)."""
    if target_faces <= 0 or len(faces) <= target_faces:
        return vertices, faces
    import fast_simplification

    v, f = fast_simplification.simplify(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int32),
                                        target_count=int(target_faces))
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]  # no collapsed triangles
    # A collapse can also fold two triangles onto the same three vertices (a zero-volume fin whose edges
    # then have four faces): drop every copy, which leaves those edges with their two proper faces.
    _, first, counts = np.unique(np.sort(f, axis=1), axis=0, return_inverse=True, return_counts=True)
    f = f[counts[first.reshape(-1)] == 1]
    v, f = compact(v, f)
    return v.astype(np.float32), f


def is_watertight(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Closed and consistently oriented, by the faces' own vertex indices: every directed edge occurs
    once and its reverse occurs too. (A mesh split along UV seams must be welded before asking.)"""
    f = np.asarray(faces, dtype=np.int64)
    if len(f) == 0:
        return False
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    n = int(max(len(vertices), f.max() + 1))
    keys = directed[:, 0] * n + directed[:, 1]
    unique_keys, counts = np.unique(keys, return_counts=True)
    reverse = directed[:, 1] * n + directed[:, 0]
    return bool((counts == 1).all() and np.isin(reverse, unique_keys).all())


def surface_deviation(vertices_a: np.ndarray, faces_a: np.ndarray, vertices_b: np.ndarray,
                      faces_b: np.ndarray) -> float:
    """Hausdorff distance between two surfaces, as libigl computes it: the largest distance from a
    vertex of either mesh to the other surface (edge-to-edge extremes between vertices are missed)."""
    import igl

    return float(igl.hausdorff(np.asarray(vertices_a, dtype=np.float64), np.asarray(faces_a, dtype=np.int64),
                               np.asarray(vertices_b, dtype=np.float64), np.asarray(faces_b, dtype=np.int64)))


def clean_mesh(vertices: np.ndarray, faces: np.ndarray, target_faces: int, min_component_share: float,
               expect_watertight: bool, to_prior_units: Callable[[np.ndarray], np.ndarray]) -> CleanMesh:
    """Floaters off, decimate, floaters off again (a collapse can cut a thin bridge), then check.

    `to_prior_units` maps the mesh's frame to the prior's canonical frame, where the surface
    deviation of the decimation is measured. A result that is not watertight where the prior is
    gets a warning in the log and in the report, not a failure: the avatar is still usable.
    """
    started = time.perf_counter()
    faces_before = int(len(faces))
    v, f, removed = drop_small_components(np.asarray(vertices, dtype=np.float32), np.asarray(faces, dtype=np.int64),
                                          min_component_share)
    undecimated = (v, f)
    v, f = decimate(v, f, target_faces)
    v, f, removed_after = drop_small_components(v, f, min_component_share)
    deviation = 0.0
    if len(f) != len(undecimated[1]):
        deviation = surface_deviation(to_prior_units(undecimated[0]), undecimated[1], to_prior_units(v), f)
    watertight = is_watertight(v, f)
    report = {
        "faces_before": faces_before, "faces": int(len(f)), "vertices": int(len(v)),
        "target_faces": int(target_faces), "components": int(component_labels(f).max()) + 1,
        "removed_components": removed + removed_after, "min_component_share": float(min_component_share),
        "watertight": watertight, "prior_watertight": bool(expect_watertight),
        "decimation_hausdorff": deviation, "seconds": time.perf_counter() - started,
    }
    if expect_watertight and not watertight:
        report["warning"] = "The avatar mesh has holes although its prior is closed."
        log.warning("The %d-face avatar mesh is not watertight although its prior is.", len(f))
    return CleanMesh(vertices=v.astype(np.float32), faces=f, report=report)
