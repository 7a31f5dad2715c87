"""The built-in neutral head (`flame_assets/base_head.obj`, made by `flame_assets/make_base_head.py`),
for users without a FLAME head. Its landmark embedding is detected like any user head's and stored
beside the mesh, so loading it needs no MediaPipe run."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .assets import ASSETS_DIR, BASE_HEAD, BASE_HEAD_LANDMARKS, builtin_mesh_path  # noqa: F401 (re-exported)
from .head import HeadPrior, load_prior
from .landmarks import NUM_LANDMARKS, LandmarkEmbedding


def builtin_prior() -> HeadPrior:
    """The built-in head prior with its stored landmark embedding."""
    mesh, marks = ASSETS_DIR / BASE_HEAD, ASSETS_DIR / BASE_HEAD_LANDMARKS
    if not mesh.exists() or not marks.exists():
        raise InputError(f"The built-in head is missing from {ASSETS_DIR}; run flame_assets/make_base_head.py "
                         "or give a head mesh with --prior.")
    prior = load_prior(mesh, detect_landmarks=False)
    embedding = LandmarkEmbedding.load(marks)
    if len(embedding.face_index) != NUM_LANDMARKS or embedding.face_index.max() >= len(prior.faces):
        raise InputError(f"{marks.name} does not match {mesh.name}; regenerate both with "
                         "flame_assets/make_base_head.py.")
    prior.landmarks = embedding
    return prior


def write_builtin_landmarks(mesh_path: Path) -> tuple[Path, int]:
    """Detect the landmarks of the mesh at `mesh_path` and store them beside it; (path, count found)."""
    prior = load_prior(mesh_path, detect_landmarks=True, progress=print)
    assert prior.landmarks is not None
    out = Path(mesh_path).with_name(BASE_HEAD_LANDMARKS)
    prior.landmarks.save(out)
    return out, int(np.count_nonzero(prior.landmarks.found))
