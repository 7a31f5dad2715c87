"""The rig of a glTF binary (.glb) prior: skin (joints, inverse bind matrices, per-vertex joints and weights) and
morph targets, read with pygltflib, so that the exported avatar can carry them (mesh/rig_transfer.py).

Only what a skinned head export from Blender or the FLAME tools holds is read: one skinned (or
morph-targeted) mesh with one primitive, whose node has no transform of its own (a skinned mesh's
node transform is ignored by glTF anyway). The joints keep their local transforms and their
parent-child links among themselves; non-joint nodes above them are not carried over.
Saved beside the prior as rig.npz (no pickles) and rig.json.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
_NODE_FIELDS = ("name", "translation", "rotation", "scale", "matrix")


@dataclass
class PriorRig:
    """A skin and morph targets on the prior's own vertices (canonical frame)."""

    vertices: np.ndarray  # (V, 3) float32 rest positions
    faces: np.ndarray  # (F, 3) int64
    joints: np.ndarray  # (V, 4) int64 indices into `nodes`
    weights: np.ndarray  # (V, 4) float32
    inverse_bind: np.ndarray  # (J, 4, 4) float32, column-major as glTF stores them, one per joint
    nodes: list[dict[str, Any]]  # the joints: name, local transform, "children" (indices among joints)
    targets: np.ndarray  # (T, V, 3) float32 position deltas
    target_names: list[str]
    target_weights: list[float]

    def save(self, directory: Path) -> None:
        np.savez(directory / "rig.npz", vertices=self.vertices, faces=self.faces, joints=self.joints,
                 weights=self.weights, inverse_bind=self.inverse_bind, targets=self.targets)
        (directory / "rig.json").write_text(json.dumps({"nodes": self.nodes, "target_names": self.target_names,
                                                        "target_weights": self.target_weights}))

    @classmethod
    def load(cls, directory: Path) -> "PriorRig | None":
        if not (directory / "rig.npz").exists():
            return None
        info = json.loads((directory / "rig.json").read_text())
        with np.load(directory / "rig.npz", allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        return cls(nodes=info["nodes"], target_names=info["target_names"], target_weights=info["target_weights"],
                   **arrays)


def accessor_array(gltf, blob: bytes, index: int) -> np.ndarray:
    """An accessor's data as a (count, width) array; normalized integers (weights stored as bytes or
    shorts) are scaled to [0, 1]. Sparse accessors are not supported (ValueError)."""
    accessor = gltf.accessors[index]
    if accessor.bufferView is None or accessor.sparse is not None:
        raise ValueError("sparse or empty accessor")
    view = gltf.bufferViews[accessor.bufferView]
    dtype = np.dtype(_COMPONENTS[accessor.componentType])
    width = _WIDTH[accessor.type]
    stride = view.byteStride or dtype.itemsize * width
    start = (view.byteOffset or 0) + (accessor.byteOffset or 0)
    raw = np.frombuffer(blob, dtype=np.uint8, count=stride * (accessor.count - 1) + dtype.itemsize * width,
                        offset=start)
    rows = np.lib.stride_tricks.as_strided(raw, shape=(accessor.count, dtype.itemsize * width), strides=(stride, 1))
    values = np.ascontiguousarray(rows).view(dtype).reshape(accessor.count, width)
    if accessor.normalized and dtype.kind in "iu":
        return values.astype(np.float32) / np.iinfo(dtype).max
    return values


def read_gltf_rig(path: Path) -> PriorRig | None:
    """The rig of a .glb prior, or None when it has no skin and no morph targets (or one this
    module cannot carry: then a warning says why)."""
    from pygltflib import GLTF2

    if path.suffix.lower() != ".glb":
        return None  # a .gltf with external buffers is read as a plain mesh; export a .glb to keep the rig
    try:
        return _read(GLTF2().load(str(path)), path)
    except Exception as error:  # a file trimesh could read as a mesh but whose rig is malformed
        log.warning("%s: its skin or morph targets could not be read (%s); the avatar is exported without "
                    "them.", path.name, error)
        return None


def _read(gltf, path: Path) -> PriorRig | None:
    blob = gltf.binary_blob()
    rigged = [node for node in gltf.nodes if node.mesh is not None and
              (node.skin is not None or any(p.targets for p in gltf.meshes[node.mesh].primitives))]
    if not rigged:
        return None
    node = rigged[0]
    primitives = gltf.meshes[node.mesh].primitives
    if len(rigged) > 1 or len(primitives) != 1 or node.matrix or node.translation or node.rotation or node.scale:
        log.warning("%s: only one rigged mesh with one primitive and no node transform is carried over; "
                    "the avatar is exported without the rig.", path.name)
        return None
    primitive = primitives[0]
    vertices = accessor_array(gltf, blob, primitive.attributes.POSITION).astype(np.float32)
    faces = accessor_array(gltf, blob, primitive.indices).reshape(-1, 3).astype(np.int64)
    count = len(vertices)
    joints, weights = np.zeros((count, 4), np.int64), np.zeros((count, 4), np.float32)
    inverse_bind, nodes = np.zeros((0, 4, 4), np.float32), []
    if node.skin is not None and primitive.attributes.JOINTS_0 is not None:
        skin = gltf.skins[node.skin]
        joints = accessor_array(gltf, blob, primitive.attributes.JOINTS_0).astype(np.int64)
        weights = accessor_array(gltf, blob, primitive.attributes.WEIGHTS_0).astype(np.float32)
        if skin.inverseBindMatrices is not None:
            inverse_bind = accessor_array(gltf, blob, skin.inverseBindMatrices).reshape(-1, 4, 4).astype(np.float32)
        else:
            inverse_bind = np.tile(np.eye(4, dtype=np.float32), (len(skin.joints), 1, 1))
        position = {joint: i for i, joint in enumerate(skin.joints)}
        for joint in skin.joints:
            source = gltf.nodes[joint]
            entry = {key: getattr(source, key) for key in _NODE_FIELDS if getattr(source, key) is not None}
            entry["children"] = [position[c] for c in (source.children or []) if c in position]
            nodes.append(entry)
    targets = np.stack([accessor_array(gltf, blob, t["POSITION"]) for t in primitive.targets or []]
                       or [np.zeros((0, count, 3))]).astype(np.float32).reshape(-1, count, 3)
    extras = gltf.meshes[node.mesh].extras or {}
    names = list(extras.get("targetNames", [f"target_{i}" for i in range(len(targets))]))
    default = list(gltf.meshes[node.mesh].weights or [0.0] * len(targets))
    return PriorRig(vertices=vertices, faces=faces, joints=joints, weights=weights, inverse_bind=inverse_bind,
                    nodes=nodes, targets=targets, target_names=names, target_weights=[float(w) for w in default])
