import math

import pytest
import torch

from headsculpt_engine.cameras import CameraSampling, orbit_cameras, sample_cameras, view_name


def test_origin_projects_to_image_centre_from_every_orbit_view():
    cams = orbit_cameras([0.0, 45.0, 90.0, 200.0], polar_deg=[60.0, 90.0, 100.0, 30.0], radius=1.3,
                         width=64, height=48)
    xy, depth = cams.project(torch.zeros(1, 3))
    assert torch.allclose(xy, torch.tensor([32.0, 24.0]).expand_as(xy), atol=1e-4)
    assert torch.allclose(depth, torch.full_like(depth, 1.3), atol=1e-5)


def test_front_camera_sits_on_plus_z_and_sees_plus_x_on_the_right():
    cam = orbit_cameras([0.0], polar_deg=90.0, radius=2.0, fov_y_deg=90.0, width=100, height=100)
    assert torch.allclose(cam.positions()[0], torch.tensor([0.0, 0.0, 2.0]), atol=1e-6)
    xy, _ = cam.project(torch.tensor([[1.0, 1.0, 0.0]]))
    # fov 90 at distance 2: focal = 50 px, so (1, 1) lands 25 px right of and above the centre.
    assert torch.allclose(xy[0, 0], torch.tensor([75.0, 25.0]), atol=1e-4)


def test_projection_matrix_agrees_with_project():
    cams = orbit_cameras([10.0, 130.0], polar_deg=[70.0, 95.0], radius=[1.1, 1.4], fov_y_deg=[35.0, 45.0],
                         width=80, height=60)
    pts = torch.rand(1, 20, 3) - 0.5
    xy, depth = cams.project(pts[0])
    clip = torch.cat([pts.expand(2, -1, -1), torch.ones(2, 20, 1)], -1) @ cams.mvp().transpose(1, 2)
    ndc = clip[..., :3] / clip[..., 3:]
    pix = torch.stack([(ndc[..., 0] + 1) * 0.5 * 80, (1 - ndc[..., 1]) * 0.5 * 60], -1)
    assert torch.allclose(pix, xy, atol=1e-3)
    assert torch.allclose(clip[..., 3], depth, atol=1e-5)


def test_rays_pass_through_pixel_centres():
    cams = orbit_cameras([30.0], polar_deg=80.0, radius=1.2, width=16, height=12)
    origins, dirs = cams.rays()
    point = origins[0, 5, 7] + 0.9 * dirs[0, 5, 7]
    xy, _ = cams.project(point[None])
    assert torch.allclose(xy[0, 0], torch.tensor([7.5, 5.5]), atol=1e-4)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(1, 12, 16), atol=1e-6)


@pytest.mark.parametrize("azimuth,expected", [(0, "front"), (34, "front"), (-34, "front"), (326, "front"),
                                              (36, "side"), (90, "side"), (144, "side"), (146, "back"),
                                              (180, "back"), (214, "back"), (216, "side"), (270, "side")])
def test_view_names_follow_the_sector_thresholds(azimuth, expected):
    assert view_name(azimuth) == expected


def test_batch_of_four_draws_one_azimuth_per_sector_within_table2_ranges():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        cams = sample_cameras(CameraSampling(), 4, 64, 64, generator=gen)
        assert cams.view_names() == ["front", "side", "back", "side"]
        assert 35 <= cams.azimuth[1] <= 145 and 215 <= cams.azimuth[3] <= 325
        assert ((cams.radius >= 1.0) & (cams.radius <= 1.5)).all()
        assert ((cams.polar >= 20) & (cams.polar <= 110)).all()
        fov = torch.rad2deg(cams.fov_y)
        assert ((fov >= 30) & (fov <= 50)).all()


def test_sampling_is_reproducible_for_a_seed():
    a = sample_cameras(CameraSampling(), 3, 8, 8, generator=torch.Generator().manual_seed(7))
    b = sample_cameras(CameraSampling(), 3, 8, 8, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.fov_y, b.fov_y)
    assert not math.isclose(float(a.azimuth[0]), float(a.azimuth[1]))
