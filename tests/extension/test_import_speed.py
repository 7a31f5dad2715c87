"""Importing a full-size result (200k triangles, 2048x2048 texture) stays well under 5 seconds."""
from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = [pytest.mark.bpy, pytest.mark.slow]


def big_avatar(path, triangles: int = 200_000, texture: int = 2048):
    import trimesh
    from PIL import Image

    rows = int(np.ceil(np.sqrt(triangles / 4))) + 2  # uv_sphere makes about 4 * rows**2 triangles
    sphere = trimesh.creation.uv_sphere(radius=0.1, count=[rows, rows])
    uv = sphere.vertices[:, :2] / 0.2 + 0.5
    image = Image.fromarray((np.random.default_rng(0).random((texture, texture, 3)) * 255).astype(np.uint8))
    sphere.visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    sphere.export(str(path))
    return len(sphere.faces)


def test_import_200k_triangles_with_2048_texture_under_5_s(bpy, scene, tmp_path):
    from headsculpt_blender import importer

    faces = big_avatar(tmp_path / "avatar.glb")
    assert faces >= 200_000
    prior = bpy.data.objects.new("prior", None)
    prior.rotation_euler = (np.pi / 2, 0, 0)
    scene.collection.objects.link(prior)
    bpy.context.view_layer.update()
    start = time.perf_counter()
    avatar = importer.import_avatar(bpy.context, tmp_path / "avatar.glb", prior.matrix_world.copy(), "big", {})
    seconds = time.perf_counter() - start
    print(f"\nimported {len(avatar.data.polygons)} triangles with a 2048 texture in {seconds:.2f} s")
    assert len(avatar.data.polygons) == faces
    image = [n.image for n in avatar.active_material.node_tree.nodes if n.type == "TEX_IMAGE"][0]
    assert tuple(image.size) == (2048, 2048)
    assert seconds < 5.0
