"""The torch rasteriser against analytic answers (covered pixels, projected areas, depths,
perspective-correct interpolation) and the antialias step's silhouette gradients."""
from __future__ import annotations

import math

import pytest
import torch

from headsculpt_engine.cameras import Cameras, orbit_cameras
from headsculpt_engine.errors import HeadSculptError
from headsculpt_engine.mesh.raster import make_rasterizer


def front_camera(size: int = 64, radius: float = 3.0, fov: float = 40.0) -> Cameras:
    return orbit_cameras([0.0], polar_deg=90.0, radius=radius, fov_y_deg=fov, width=size, height=size)


def unproject(cams: Cameras, pixels: list[tuple[float, float]], depth: float) -> torch.Tensor:
    """World points that project to the given pixel positions at the given view depth."""
    f = float(cams.focal()[0])
    pts = []
    for px, py in pixels:
        cam = torch.tensor([(px - cams.width / 2) * depth / f, -(py - cams.height / 2) * depth / f, -depth, 1.0])
        pts.append((cams.c2w[0] @ cam)[:3])
    return torch.stack(pts)


def cube(half: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.tensor([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = [[a, b, c] for a, b, c, d in quads] + [[a, c, d] for a, b, c, d in quads]
    return v, torch.tensor(f, dtype=torch.int32)


def test_triangle_covers_the_pixel_centres_inside_it():
    cams = front_camera(64)
    corners = [(10.3, 10.3), (50.3, 10.3), (10.3, 50.3)]
    verts = unproject(cams, corners, depth=2.0)
    out = make_rasterizer("cpu", "torch").rasterize(verts, torch.tensor([[0, 1, 2]]), cams)
    expected = sum(1 for i in range(64) for j in range(64)
                   if i + 0.5 >= 10.3 and j + 0.5 >= 10.3 and (i + 0.5 - 10.3) + (j + 0.5 - 10.3) <= 40.0)
    assert int(out.mask.sum()) == expected
    assert out.mask[0, 11, 11] and not out.mask[0, 5, 5] and not out.mask[0, 45, 45]
    # y-down: the triangle's right angle is at the top left of the image
    assert bool(out.mask[0, 11, 48]) and not bool(out.mask[0, 48, 48])
    assert set(out.triangle_id.unique().tolist()) == {-1, 0}


def test_cube_projected_area_matches_orthographic_limit():
    # A far, narrow camera on the cube's diagonal: projected area ~ sqrt(3) a^2 (a = side).
    size, radius, fov = 128, 60.0, 2.0
    polar = math.degrees(math.acos(1 / math.sqrt(3)))
    cams = orbit_cameras([45.0], polar_deg=polar, radius=radius, fov_y_deg=fov, width=size, height=size)
    verts, faces = cube(0.5)
    out = make_rasterizer("cpu", "torch").rasterize(verts, faces, cams)
    px_per_unit = float(cams.focal()[0]) / radius
    expected = math.sqrt(3.0) * px_per_unit ** 2
    assert abs(int(out.mask.sum()) - expected) / expected < 0.02


def test_depth_of_known_point_and_front_face():
    cams = front_camera(65, radius=3.0)
    verts, faces = cube(0.5)
    out = make_rasterizer("cpu", "torch").rasterize(verts, faces, cams)
    # The image centre sees the front face (z = +0.5) at view depth 3 - 0.5.
    assert float(out.depth[0, 32, 32]) == pytest.approx(2.5, abs=1e-5)
    assert math.isinf(float(out.depth[0, 0, 0])) and int(out.triangle_id[0, 0, 0]) == -1
    hit_faces = faces[out.triangle_id[0, 32, 32]].long()
    assert torch.allclose(verts[hit_faces][:, 2], torch.tensor(0.5))


def test_perspective_correct_interpolation_on_a_slanted_plane():
    cams = front_camera(48, radius=3.0, fov=50.0)
    # A quad tilted strongly in depth, so affine (screen-space) interpolation would be visibly wrong.
    verts = torch.tensor([[-1.0, -1.0, -1.5], [1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, -1.5]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    rast = make_rasterizer("cpu", "torch")
    out = rast.rasterize(verts, faces, cams)
    pos = rast.interpolate(verts, out, faces)[0]
    origins, dirs = cams.rays()
    # Ray-plane intersection with the plane through the quad: normal n, n . x = c.
    n = torch.cross(verts[1] - verts[0], verts[3] - verts[0], dim=0)
    c = torch.dot(n, verts[0])
    t = (c - origins[0] @ n) / (dirs[0] @ n)
    exact = origins[0] + t.unsqueeze(-1) * dirs[0]
    m = out.mask[0]
    assert m.sum() > 300
    assert torch.allclose(pos[m], exact[m], atol=1e-4)
    # Depth is the view-axis distance of that intersection.
    assert torch.allclose(out.depth[0][m], (t.unsqueeze(-1) * dirs[0])[m] @ -cams.c2w[0, :3, 2], atol=1e-4)


def test_interpolation_is_exact_at_a_vertex():
    cams = front_camera(64)
    corners = [(20.5, 20.5), (60.2, 22.1), (24.3, 61.7)]
    verts = unproject(cams, corners, depth=2.0)
    attrs = torch.tensor([[1.0, 0.0, 7.0], [0.0, 1.0, -3.0], [0.0, 0.0, 2.5]])
    rast = make_rasterizer("cpu", "torch")
    out = rast.rasterize(verts, torch.tensor([[0, 1, 2]]), cams)
    assert bool(out.mask[0, 20, 20])
    got = rast.interpolate(attrs, out, torch.tensor([[0, 1, 2]]))[0, 20, 20]
    assert torch.allclose(got, attrs[0], atol=1e-5)


def test_batched_vertices_and_background_attributes():
    cams = orbit_cameras([0.0, 90.0], polar_deg=90.0, radius=3.0, fov_y_deg=40.0, width=32, height=32)
    verts, faces = cube(0.4)
    batched = torch.stack([verts, verts + torch.tensor([0.3, 0.0, 0.0])])
    rast = make_rasterizer("cpu", "torch")
    out = rast.rasterize(batched, faces, cams)
    assert out.triangle_id.shape == (2, 32, 32) and out.barycentric.shape == (2, 32, 32, 3)
    colour = rast.interpolate(torch.ones(2, 8, 2), out, faces)
    assert torch.all(colour[~out.mask] == 0) and torch.allclose(colour[out.mask], torch.ones(1, 2))
    bsum = out.barycentric[out.mask].sum(-1)
    assert torch.allclose(bsum, torch.ones_like(bsum), atol=1e-5)


def test_antialias_gradient_equals_silhouette_length():
    # A flat square facing the camera, colour 1 on black. Moving its right edge by one pixel changes
    # the antialiased image's sum by the edge's length in pixels.
    cams = front_camera(64, radius=3.0)
    depth = 3.0
    corners = [(16.2, 16.2), (40.3, 16.2), (40.3, 44.2), (16.2, 44.2)]
    verts = unproject(cams, corners, depth=depth).requires_grad_(True)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    rast = make_rasterizer("cpu", "torch")
    out = rast.rasterize(verts, faces, cams)
    img = rast.interpolate(torch.ones(4, 1), out, faces)
    aa = rast.antialias(img, out, verts, faces, cams)
    aa.sum().backward()
    grad = verts.grad
    px_per_world = float(cams.focal()[0]) / depth
    rows = 44 - 16  # pixel rows the right edge spans (centres 16.5 .. 43.5)
    right_dx = float(grad[1, 0] + grad[2, 0]) / px_per_world
    left_dx = float(grad[0, 0] + grad[3, 0]) / px_per_world
    assert right_dx == pytest.approx(rows, rel=0.05)
    assert left_dx == pytest.approx(-rows, rel=0.05)
    # Without antialiasing the image is piecewise constant: no geometry gradient at all.
    verts.grad = None
    rast.interpolate(torch.ones(4, 1), rast.rasterize(verts, faces, cams), faces).sum().backward()
    assert verts.grad is None or float(verts.grad.abs().sum()) < 1e-4  # float round-off only
    # Interior edge (the quad's diagonal) contributes nothing: the image is unchanged inside.
    assert torch.allclose(aa[0, 20:40, 20:36], img[0, 20:40, 20:36])


def test_occluded_triangle_is_hidden():
    cams = front_camera(32)
    near = unproject(cams, [(4.1, 4.1), (28.2, 4.1), (4.1, 28.2)], depth=2.0)
    far = unproject(cams, [(4.1, 4.1), (28.2, 4.1), (4.1, 28.2)], depth=2.5)
    verts = torch.cat([far, near])
    out = make_rasterizer("cpu", "torch").rasterize(verts, torch.tensor([[0, 1, 2], [3, 4, 5]]), cams)
    assert set(out.triangle_id[out.mask].tolist()) == {1}
    assert torch.allclose(out.depth[out.mask], torch.tensor(2.0), atol=1e-5)


def test_unknown_or_unavailable_backend_is_a_user_error():
    with pytest.raises(HeadSculptError):
        make_rasterizer("cpu", "nvdiffrast")
    with pytest.raises(HeadSculptError):
        make_rasterizer("cpu", "opengl")  # type: ignore[arg-type]
    assert make_rasterizer("cpu").name == "torch"


def test_uv_rasterisation_covers_texture_space_triangles():
    from headsculpt_engine.mesh.raster import rasterize_uv

    # The lower-left half of texture space (v up): texel rows near the bottom of the image.
    uv = torch.tensor([[0.01, 0.02], [0.97, 0.03], [0.02, 0.9]])
    tri, bary = rasterize_uv(uv, torch.tensor([[0, 1, 2]]), 16)
    covered = tri >= 0

    def inside(u: float, v: float) -> bool:  # half-plane tests of the three (counter-clockwise) edges
        pts = uv.tolist() + [uv[0].tolist()]
        return all((b[0] - a[0]) * (v - a[1]) - (b[1] - a[1]) * (u - a[0]) >= 0 for a, b in zip(pts, pts[1:]))

    expected = sum(inside((i + 0.5) / 16, 1 - (j + 0.5) / 16) for i in range(16) for j in range(16))
    assert int(covered.sum()) == expected > 80
    assert bool(covered[15, 0]) and not bool(covered[0, 15])
    # Barycentrics reproduce the texel centre's uv.
    ys, xs = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    rebuilt = (bary.unsqueeze(-1) * uv[None, None]).sum(-2)
    assert torch.allclose(rebuilt[covered], torch.stack([xs / 16, 1 - ys / 16], -1)[covered], atol=1e-5)


def test_speed_of_twenty_thousand_triangles_at_512():
    import time

    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.45)  # 20,480 triangles
    v, f = torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces)
    cams = orbit_cameras([0.0], width=512, height=512)
    rast = make_rasterizer("cpu", "torch")
    rast.rasterize(v, f, cams)
    # CPU time on one thread: what the work costs, however loaded the machine is (wall time is not, and
    # with more threads idle ones spinning would count).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        out = rast.rasterize(v, f, cams)
        rast.antialias(rast.interpolate(v, out, f), out, v, f, cams)
        spent = time.process_time() - start
    finally:
        torch.set_num_threads(threads)
    assert spent < 3.0  # 0.3 s on the development CPU
    assert int(out.mask.sum()) > 150_000
