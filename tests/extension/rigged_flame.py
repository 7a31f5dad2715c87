"""A FLAME head rigged the way the FLAME Blender add-on rigs it, for the Make-animatable tests: an
armature (root, neck, jaw) skinning the head through vertex groups and an Armature modifier (the head
parented to it), and two shape keys: `smile` (the smile fixture, rigidly aligned on the upper head)
and `mouth_open` (the lower lip and chin lowered by 1 cm, driven by the armature's `mouth` property).

Coordinates are the FLAME mesh data's: metres, +Y up, the face along +Z (the objects stand upright in
Blender through their +90-degree X rotation)."""
from __future__ import annotations

import numpy as np

JAW_HEAD = (0.0, 1.47, -0.03)  # behind the mouth, at the level of the lower ears
MOUTH_Y = 1.455  # below this, in front of the jaw joint: the jaw's vertices
KEY_NAMES = ("smile", "mouth_open")


def obj_vertices(path) -> np.ndarray:
    return np.array([line.split()[1:4] for line in open(path) if line.startswith("v ")], dtype=np.float64)


def kabsch(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t with R @ source + t closest to target (least squares)."""
    cs, ct = source.mean(axis=0), target.mean(axis=0)
    u, _, vt = np.linalg.svd((source - cs).T @ (target - ct))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rotation, ct - rotation @ cs


def ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def jaw_weights(co: np.ndarray) -> np.ndarray:
    """1 on the chin and lower lip, fading over 1.5-3 cm: below the mouth, above the neck, in front."""
    return ramp(MOUTH_Y - co[:, 1], 0.0, 0.015) * ramp(co[:, 1], 1.37, 1.39) * ramp(co[:, 2], -0.02, 0.01)


def mouth_open_offsets(co: np.ndarray) -> np.ndarray:
    offsets = np.zeros_like(co)
    offsets[:, 1] = -0.01 * jaw_weights(co)
    return offsets


def rig_flame(bpy, head, smile_path):
    """Rig `head` (the imported template) in place; returns the armature object."""
    co = np.empty(len(head.data.vertices) * 3)
    head.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)

    data = bpy.data.armatures.new("FLAME rig")
    rig = bpy.data.objects.new("FLAME rig", data)
    bpy.context.scene.collection.objects.link(rig)
    rig.matrix_world = head.matrix_world.copy()
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    bones = {}
    for name, start, end, parent in (("root", (0, 1.30, -0.03), (0, 1.36, -0.03), None),
                                     ("neck", (0, 1.36, -0.03), JAW_HEAD, "root"),
                                     ("jaw", JAW_HEAD, (0, 1.42, 0.06), "neck")):
        bone = data.edit_bones.new(name)
        bone.head, bone.tail = start, end
        if parent:
            bone.parent = bones[parent]
        bones[name] = bone
    bpy.ops.object.mode_set(mode="OBJECT")

    jaw = jaw_weights(co)
    root = ramp(1.345 - co[:, 1], 0.0, 0.02)
    neck = 1.0 - jaw - root
    for name, weights in (("root", root), ("neck", neck), ("jaw", jaw)):
        group = head.vertex_groups.new(name=name)
        for index in np.flatnonzero(weights > 0):
            group.add([int(index)], float(weights[index]), "REPLACE")
    modifier = head.modifiers.new("Armature", "ARMATURE")
    modifier.object = rig
    head.parent = rig
    head.matrix_parent_inverse = rig.matrix_world.inverted()

    head.shape_key_add(name="Basis", from_mix=False)
    smile = obj_vertices(smile_path)
    upper = co[:, 1] > 1.52  # the smile leaves the upper head alone: align on it
    rotation, shift = kabsch(smile[upper], co[upper])
    for name, shape in (("smile", smile @ rotation.T + shift), ("mouth_open", co + mouth_open_offsets(co))):
        block = head.shape_key_add(name=name, from_mix=False)
        block.data.foreach_set("co", shape.astype(np.float32).ravel())
        block.slider_max = 1.5
    head.data.shape_keys.key_blocks["smile"].value = 0.0
    rig["mouth"] = 0.0  # the driver's input, as the FLAME add-on's sliders are properties
    driver = head.data.shape_keys.key_blocks["mouth_open"].driver_add("value").driver
    driver.type = "SCRIPTED"
    variable = driver.variables.new()
    variable.name, variable.type = "mouth", "SINGLE_PROP"
    variable.targets[0].id = rig
    variable.targets[0].data_path = '["mouth"]'
    driver.expression = "mouth"
    rig.update_tag()  # a property set from a script reaches the rig's evaluated copy only when tagged
    return rig
