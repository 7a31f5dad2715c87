"""Bring a finished avatar (the engine's avatar.glb) into the scene, placed exactly on its prior.

The glTF importer turns glTF's Y-up into Blender's Z-up, which is exactly `frames.engine_to_blender`.
We undo that once (back to the engine frame) and map the points into the prior's local coordinates with
`frames.engine_to_local`, then give the avatar the prior's world matrix. All vertex work is bulk numpy.
"""
from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np

from .frames import blender_to_engine, engine_to_local

COLLECTION = "HeadSculpt"


def avatar_collection(scene) -> bpy.types.Collection:
    collection = bpy.data.collections.get(COLLECTION)
    if collection is None:
        collection = bpy.data.collections.new(COLLECTION)
    if collection.name not in scene.collection.children:
        scene.collection.children.link(collection)
    return collection


def _world_coordinates(obj) -> np.ndarray:
    mesh = obj.data
    local = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
    mesh.vertices.foreach_get("co", local)
    matrix = np.array(obj.matrix_world, dtype=np.float64)
    return local.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]


def import_avatar(context, glb_path: Path, placement, name: str, properties: dict,
                  world_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> bpy.types.Object:
    """Import `glb_path`; `placement` is the world matrix of the prior the engine got (mathutils.Matrix).
    Returns the new mesh object in the "HeadSculpt" collection with `properties` as custom properties."""
    before = set(bpy.data.objects)
    result = bpy.ops.import_scene.gltf(filepath=str(glb_path), merge_vertices=True)
    if "FINISHED" not in result:
        raise RuntimeError(f"Blender could not read {glb_path.name}")
    created = [obj for obj in bpy.data.objects if obj not in before]
    meshes = [obj for obj in created if obj.type == "MESH"]
    if len(meshes) != 1:
        for obj in created:
            bpy.data.objects.remove(obj)
        raise RuntimeError(f"{glb_path.name} holds {len(meshes)} meshes where one avatar mesh was expected")
    avatar = meshes[0]
    # Bake whatever node transform the importer gave the object: these are then Blender-oriented points.
    oriented = _world_coordinates(avatar)
    engine_points = blender_to_engine(oriented)  # undo the importer's Y-up -> Z-up conversion, once
    local = engine_to_local(engine_points, placement)
    avatar.data.vertices.foreach_set("co", local.astype(np.float32).ravel())
    avatar.data.update()
    for obj in created:
        if obj is not avatar:
            bpy.data.objects.remove(obj)
    avatar.parent = None
    matrix = placement.copy()
    matrix.translation = matrix.translation + type(matrix.translation)(world_offset)
    avatar.matrix_world = matrix

    collection = avatar_collection(context.scene)
    for owner in list(avatar.users_collection):
        owner.objects.unlink(avatar)
    collection.objects.link(avatar)
    avatar.name = name
    avatar.data.name = name
    for key, value in properties.items():
        avatar[key] = value
    context.view_layer.update()  # bounds and dimensions reflect the moved vertices from now on
    return avatar
