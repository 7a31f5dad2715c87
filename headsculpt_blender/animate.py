"""Make animatable: the avatar gets its own copy of what drives its prior, so that it poses and takes
expressions without the prior in the scene, and exports as a rigged, blend-shaped character.

Every avatar vertex is tied to the nearest point of the prior's rest surface (a triangle and its
barycentric coordinates, found with Blender's BVH tree). Through that correspondence the avatar gets:

- every vertex group of the prior (FLAME's joints, or any armature's groups), weights interpolated
  from the triangle's corners. Parts far from the prior (hair, hats, horns) take the weights of the
  nearest point of the prior's surface however far they are: hair moves with the scalp under it.
- every shape key of the prior, with its name, value, range, relative key and drivers; the key's
  displacement is interpolated the same way and faded out with the distance to the prior, at full
  strength up to `inner` and to nothing at `outer` (shares of the prior's bounding-box diagonal), so
  a hat brim does not smile with the mouth under it.
- an Armature modifier for each of the prior's, on the same armature, and the prior's parent when
  that is an armature.

Only bpy, mathutils and numpy: the extension never imports SciPy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import bpy
import numpy as np

INNER_SHARE = 0.02  # full shape-key strength up to 2% of the prior's diagonal (about 9 mm on FLAME)
OUTER_SHARE = 0.06  # none beyond 6% (about 26 mm)
ARMATURE_MODIFIER = "HeadSculpt armature"
_KEY_PATH = re.compile(r'^key_blocks\["(.+)"\]\.(\w+)$')


@dataclass
class SurfaceMap:
    """For each avatar vertex: the prior triangle's corner vertices, barycentric weights, and the
    distance (prior local units) to that nearest surface point."""

    corners: np.ndarray  # (N, 3) int64 prior vertex indices
    weights: np.ndarray  # (N, 3) float64, rows sum to 1
    distance: np.ndarray  # (N,) float64
    to_avatar: np.ndarray  # (3, 3): prior-local vectors -> avatar-local vectors


@dataclass
class AnimatableReport:
    vertex_groups: list[str] = field(default_factory=list)
    shape_keys: list[str] = field(default_factory=list)
    drivers: int = 0
    armatures: list[str] = field(default_factory=list)


def rest_coordinates(obj) -> np.ndarray:
    """The mesh's rest shape: its reference shape key when it has shape keys, else its vertices."""
    mesh = obj.data
    source = mesh.shape_keys.reference_key.data if mesh.shape_keys else mesh.vertices
    co = np.empty(len(source) * 3)
    source.foreach_get("co", co)
    return co.reshape(-1, 3)


def barycentric(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentric coordinates of `points` (on or near their triangles), clipped into the triangle."""
    v0, v1, v2 = b - a, c - a, points - a
    d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
    d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
    denom = d00 * d11 - d01 * d01
    flat = np.abs(denom) < 1e-30  # a degenerate triangle: all weight on its first corner
    denom = np.where(flat, 1.0, denom)
    v = np.where(flat, 0.0, (d11 * d20 - d01 * d21) / denom)
    w = np.where(flat, 0.0, (d00 * d21 - d01 * d20) / denom)
    weights = np.clip(np.stack([1.0 - v - w, v, w], axis=1), 0.0, 1.0)
    return weights / weights.sum(axis=1, keepdims=True).clip(1e-12)


def surface_map(prior, avatar) -> SurfaceMap:
    """Nearest points of the prior's rest surface for the avatar's vertices, wherever both objects are."""
    from mathutils import Vector
    from mathutils.bvhtree import BVHTree

    mesh = prior.data
    mesh.calc_loop_triangles()
    rest = rest_coordinates(prior)
    triangles = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int64)
    mesh.loop_triangles.foreach_get("vertices", triangles)
    triangles = triangles.reshape(-1, 3)
    tree = BVHTree.FromPolygons([Vector(p) for p in rest], triangles.tolist())

    avatar_to_prior = prior.matrix_world.inverted() @ avatar.matrix_world
    co = np.empty(len(avatar.data.vertices) * 3)
    avatar.data.vertices.foreach_get("co", co)
    matrix = np.array(avatar_to_prior)
    points = co.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
    nearest = np.empty((len(points), 3))
    index = np.empty(len(points), dtype=np.int64)
    for i, point in enumerate(points):
        location, _normal, face, _distance = tree.find_nearest(Vector(point))
        nearest[i], index[i] = location, face
    corners = triangles[index]
    weights = barycentric(nearest, rest[corners[:, 0]], rest[corners[:, 1]], rest[corners[:, 2]])
    to_avatar = np.array(avatar_to_prior.inverted().to_3x3())
    return SurfaceMap(corners=corners, weights=weights, distance=np.linalg.norm(points - nearest, axis=1),
                      to_avatar=to_avatar)


def interpolate(smap: SurfaceMap, per_prior_vertex: np.ndarray) -> np.ndarray:
    """Values at the prior's vertices (V, ...) carried to the avatar's vertices (N, ...)."""
    picked = per_prior_vertex[smap.corners]  # (N, 3, ...)
    weights = smap.weights.reshape(smap.weights.shape + (1,) * (picked.ndim - 2))
    return (picked * weights).sum(axis=1)


def transfer_vertex_groups(prior, avatar, smap: SurfaceMap) -> list[str]:
    """Every vertex group of the prior on the avatar, with interpolated weights (replacing any of the
    same name)."""
    groups = list(prior.vertex_groups)
    if not groups:
        return []
    weights = np.zeros((len(prior.data.vertices), len(groups)))
    slot = {group.index: column for column, group in enumerate(groups)}
    for vertex in prior.data.vertices:
        for element in vertex.groups:
            if element.group in slot:
                weights[vertex.index, slot[element.group]] = element.weight
    carried = interpolate(smap, weights)
    names = []
    for column, group in enumerate(groups):
        old = avatar.vertex_groups.get(group.name)
        if old is not None:
            avatar.vertex_groups.remove(old)
        target = avatar.vertex_groups.new(name=group.name)
        for vertex in np.flatnonzero(carried[:, column] > 1e-4):
            target.add([int(vertex)], float(carried[vertex, column]), "REPLACE")
        names.append(group.name)
    return names


def falloff(distance: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """1 up to `inner`, linearly down to 0 at `outer`."""
    return np.clip((outer - distance) / max(outer - inner, 1e-12), 0.0, 1.0)


def transfer_shape_keys(prior, avatar, smap: SurfaceMap, inner_share: float = INNER_SHARE,
                        outer_share: float = OUTER_SHARE) -> list[str]:
    """Every shape key of the prior as a shape key of the avatar: same name, value, range, relative key
    and vertex group; displacements carried by the correspondence and faded with the distance."""
    keys = prior.data.shape_keys
    if keys is None or len(keys.key_blocks) < 2:
        return []
    rest = rest_coordinates(prior)
    diagonal = float(np.linalg.norm(rest.max(axis=0) - rest.min(axis=0)))
    fade = falloff(smap.distance, inner_share * diagonal, outer_share * diagonal)[:, None]
    if avatar.data.shape_keys is None:
        avatar.shape_key_add(name="Basis", from_mix=False)
    avatar_keys = avatar.data.shape_keys
    avatar_keys.use_relative = keys.use_relative
    reference = keys.reference_key
    names = []
    for block in keys.key_blocks:
        if block == reference:
            continue
        old = avatar_keys.key_blocks.get(block.name)
        if old is not None:
            avatar.shape_key_remove(old)
        relative = avatar_keys.key_blocks.get(block.relative_key.name, avatar_keys.reference_key)
        displacement = _block_co(block) - _block_co(block.relative_key)
        carried = interpolate(smap, displacement) * fade @ smap.to_avatar.T
        new = avatar.shape_key_add(name=block.name, from_mix=False)
        new.data.foreach_set("co", (_block_co(relative) + carried).astype(np.float32).ravel())
        new.relative_key = relative
        new.slider_min, new.slider_max = block.slider_min, block.slider_max
        new.value, new.mute, new.interpolation = block.value, block.mute, block.interpolation
        if block.vertex_group and avatar.vertex_groups.get(block.vertex_group):
            new.vertex_group = block.vertex_group
        names.append(block.name)
    return names


def _block_co(block) -> np.ndarray:
    co = np.empty(len(block.data) * 3)
    block.data.foreach_get("co", co)
    return co.reshape(-1, 3)


def copy_drivers(prior, avatar) -> int:
    """The drivers on the prior's shape keys, on the avatar's keys of the same names. Targets that
    were the prior (or its shape keys) become the avatar (or its shape keys)."""
    source = prior.data.shape_keys
    target = avatar.data.shape_keys
    if source is None or target is None or source.animation_data is None:
        return 0
    swap = {prior: avatar, source: target, prior.data: avatar.data}
    copied = []
    for curve in source.animation_data.drivers:
        match = _KEY_PATH.match(curve.data_path)
        if not match or match[1] not in target.key_blocks:
            continue
        block = target.key_blocks[match[1]]
        block.driver_remove(match[2])
        new = block.driver_add(match[2])
        driver, original = new.driver, curve.driver
        driver.type, driver.use_self = original.type, original.use_self
        for variable in original.variables:
            copy = driver.variables.new()
            copy.name, copy.type = variable.name, variable.type
            for source_target, new_target in zip(variable.targets, copy.targets):
                if variable.type == "SINGLE_PROP":
                    new_target.id_type = source_target.id_type
                new_target.id = swap.get(source_target.id, source_target.id)
                new_target.data_path = source_target.data_path
                new_target.bone_target = source_target.bone_target
                new_target.transform_type = source_target.transform_type
                new_target.transform_space = source_target.transform_space
                new_target.rotation_mode = source_target.rotation_mode
        if original.type == "SCRIPTED":
            driver.expression = original.expression
        if len(curve.keyframe_points):  # a mapping curve: keep it, without the default generator
            for modifier in list(new.modifiers):
                new.modifiers.remove(modifier)
            for point in curve.keyframe_points:
                new.keyframe_points.insert(point.co[0], point.co[1]).interpolation = point.interpolation
        copied.append(new.driver)
    # Drivers read the evaluated copies of their targets; a custom property set from a script does not
    # tag its ID, so its evaluated copy may lack it and the driver be flagged invalid. Tag the targets
    # and clear the flag, as editing the driver in the UI does.
    for driver in copied:
        for variable in driver.variables:
            for slot in variable.targets:
                if slot.id is not None:
                    slot.id.update_tag()
        driver.is_valid = True
    return len(copied)


def attach_armatures(prior, avatar) -> list[str]:
    """An Armature modifier on each armature that deforms the prior, and the prior's armature parent."""
    names = []
    for modifier in prior.modifiers:
        if modifier.type != "ARMATURE" or modifier.object is None:
            continue
        name = ARMATURE_MODIFIER if not names else f"{ARMATURE_MODIFIER} {len(names) + 1}"
        copy = avatar.modifiers.get(name) or avatar.modifiers.new(name, "ARMATURE")
        copy.object = modifier.object
        copy.use_vertex_groups, copy.use_bone_envelopes = modifier.use_vertex_groups, modifier.use_bone_envelopes
        copy.use_deform_preserve_volume = modifier.use_deform_preserve_volume
        names.append(modifier.object.name)
    parent = prior.parent
    if parent is not None and parent.type == "ARMATURE" and prior.parent_type == "OBJECT":
        world = avatar.matrix_world.copy()
        avatar.parent = parent
        avatar.matrix_parent_inverse = parent.matrix_world.inverted()
        avatar.matrix_world = world
        if parent.name not in names:
            names.append(parent.name)
    return names


def make_animatable(prior, avatar, inner_share: float = INNER_SHARE,
                    outer_share: float = OUTER_SHARE) -> AnimatableReport:
    """Give `avatar` the prior's vertex groups, shape keys (with drivers) and armature deformation.

    Raises ValueError with a sentence for the artist when there is nothing to carry over.
    """
    has_keys = prior.data.shape_keys is not None and len(prior.data.shape_keys.key_blocks) > 1
    has_rig = any(m.type == "ARMATURE" and m.object for m in prior.modifiers) or bool(prior.vertex_groups)
    if not has_keys and not has_rig:
        raise ValueError(f"{prior.name} has no armature, vertex groups or shape keys: there is nothing to "
                         "make the avatar animatable with.")
    bind = avatar.modifiers.get("HeadSculpt bind")  # a binding from earlier versions: superseded
    if bind is not None:
        avatar.modifiers.remove(bind)
    smap = surface_map(prior, avatar)
    report = AnimatableReport()
    report.vertex_groups = transfer_vertex_groups(prior, avatar, smap)
    report.shape_keys = transfer_shape_keys(prior, avatar, smap, inner_share, outer_share)
    report.armatures = attach_armatures(prior, avatar)
    avatar.data.update()
    report.drivers = copy_drivers(prior, avatar)  # last: it updates the view layer
    return report
