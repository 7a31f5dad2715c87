"""The prior's skin and morph targets carried to the avatar, and written into avatar.glb (pygltflib).

Each avatar vertex takes the nearest point of the prior's rig mesh (libigl): skin weights are
interpolated from that triangle's corners (the four largest kept and renormalised, as glTF's
JOINTS_0/WEIGHTS_0 hold four), morph-target deltas likewise, faded with the distance to the prior
(full up to 2%, none beyond 6% of the prior's bounding-box diagonal: the rule of the Blender
extension's Make animatable, so hats and hair stay out of expressions). Far parts keep the weights of
the nearest prior point however far they are.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..prior.rig import PriorRig

INNER_SHARE, OUTER_SHARE = 0.02, 0.06


def transfer(rig: "PriorRig", points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(joints (N, 4), weights (N, 4), targets (T, N, 3)) for avatar `points` in the prior's frame."""
    from .closest import closest_on_surface

    v = rig.vertices.astype(np.float64)
    face, bary, distance = closest_on_surface(points, v, rig.faces)
    corners = rig.faces[face]

    joints = np.zeros((len(points), 4), np.int64)
    weights = np.zeros((len(points), 4), np.float32)
    count = len(rig.nodes)
    if count:
        dense = np.zeros((len(v), count))
        np.add.at(dense, (np.repeat(np.arange(len(v)), 4), rig.joints.reshape(-1)), rig.weights.reshape(-1))
        carried = (dense[corners] * bary[:, :, None]).sum(axis=1)
        order = np.argsort(-carried, axis=1)[:, :4]
        top = np.take_along_axis(carried, order, axis=1)
        joints[:, : order.shape[1]] = order
        weights[:, : top.shape[1]] = top / top.sum(axis=1, keepdims=True).clip(1e-12)

    diagonal = float(np.linalg.norm(np.ptp(v, axis=0)))
    fade = np.clip((OUTER_SHARE * diagonal - distance) / ((OUTER_SHARE - INNER_SHARE) * diagonal), 0.0, 1.0)
    targets = (rig.targets[:, corners] * bary[None, :, :, None]).sum(axis=2) * fade[None, :, None]
    return joints, weights, targets.astype(np.float32)


def write_rigged_glb(path, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture,
                     rig: "PriorRig", joints: np.ndarray, weights: np.ndarray, targets: np.ndarray) -> None:
    """A glTF binary with one textured mesh, skinned to the rig's joints when it has any, with one
    morph target per rig target (named in `extras.targetNames`, as Blender and three.js read them)."""
    import pygltflib as g

    blob = bytearray()
    views: list[g.BufferView] = []
    accessors: list[g.Accessor] = []

    def add(data: np.ndarray, kind: str, component: int, target: int | None = None, bounds: bool = False) -> int:
        while len(blob) % 4:
            blob.append(0)
        raw = np.ascontiguousarray(data).tobytes()
        views.append(g.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(raw), target=target))
        blob.extend(raw)
        flat = data.reshape(len(data), -1)
        extra = {"min": flat.min(axis=0).tolist(), "max": flat.max(axis=0).tolist()} if bounds else {}
        accessors.append(g.Accessor(bufferView=len(views) - 1, componentType=component, count=len(data), type=kind,
                                    **extra))
        return len(accessors) - 1

    attributes = g.Attributes(POSITION=add(vertices.astype(np.float32), g.VEC3, g.FLOAT, g.ARRAY_BUFFER, True),
                              TEXCOORD_0=add(np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], 1).astype(np.float32),
                                             g.VEC2, g.FLOAT, g.ARRAY_BUFFER))
    skinned = bool(rig.nodes)
    if skinned:
        attributes.JOINTS_0 = add(joints.astype(np.uint16), g.VEC4, g.UNSIGNED_SHORT, g.ARRAY_BUFFER)
        attributes.WEIGHTS_0 = add(weights.astype(np.float32), g.VEC4, g.FLOAT, g.ARRAY_BUFFER)
    indices = add(faces.astype(np.uint32).reshape(-1, 1), g.SCALAR, g.UNSIGNED_INT, g.ELEMENT_ARRAY_BUFFER)
    morphs = [{"POSITION": add(delta.astype(np.float32), g.VEC3, g.FLOAT, g.ARRAY_BUFFER, True)} for delta in targets]
    png = io.BytesIO()
    texture.save(png, format="PNG")
    while len(blob) % 4:
        blob.append(0)
    views.append(g.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(png.getvalue())))
    image_view = len(views) - 1
    blob.extend(png.getvalue())

    primitive = g.Primitive(attributes=attributes, indices=indices, material=0, targets=morphs or None)
    mesh = g.Mesh(name="avatar", primitives=[primitive], weights=list(rig.target_weights) or None,
                  extras={"targetNames": list(rig.target_names)} if morphs else {})
    nodes = [g.Node(**{k: v for k, v in entry.items()}) for entry in rig.nodes]
    mesh_node = len(nodes)
    nodes.append(g.Node(name="avatar", mesh=0, skin=0 if skinned else None))
    children = {c for entry in rig.nodes for c in entry["children"]}
    roots = [i for i in range(len(rig.nodes)) if i not in children] + [mesh_node]
    skins = []
    if skinned:
        bind = add(rig.inverse_bind.astype(np.float32).reshape(-1, 16), g.MAT4, g.FLOAT)
        skins = [g.Skin(joints=list(range(len(rig.nodes))), inverseBindMatrices=bind)]
    gltf = g.GLTF2(
        asset=g.Asset(generator="HeadSculpt engine"), scene=0, scenes=[g.Scene(nodes=roots)], nodes=nodes,
        meshes=[mesh], skins=skins, accessors=accessors, bufferViews=views,
        buffers=[g.Buffer(byteLength=len(blob))],
        images=[g.Image(bufferView=image_view, mimeType="image/png")],
        samplers=[g.Sampler(magFilter=g.LINEAR, minFilter=g.LINEAR_MIPMAP_LINEAR)],
        textures=[g.Texture(source=0, sampler=0)],
        materials=[g.Material(name="avatar", pbrMetallicRoughness=g.PbrMetallicRoughness(
            baseColorTexture=g.TextureInfo(index=0), metallicFactor=0.0, roughnessFactor=1.0))],
    )
    gltf.set_binary_blob(bytes(blob))
    gltf.save_binary(str(path))
