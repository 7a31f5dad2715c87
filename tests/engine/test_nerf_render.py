"""Volume rendering against closed forms, the shading modes, and the field's normals on the prior."""
import math

import torch

from analytic_prior import SpherePrior
from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.config import preset_config
from headsculpt_engine.nerf.background import Background
from headsculpt_engine.nerf.field import HeadField
from headsculpt_engine.nerf.occupancy import OccupancyGrid
from headsculpt_engine.nerf.render import RenderSettings, ray_box, render, shade


class ConstantField:
    """Density `sigma` and albedo `colour` everywhere (a test stand-in for HeadField)."""

    def __init__(self, sigma: float, colour):
        self.sigma, self.colour = sigma, torch.tensor(colour)

    def __call__(self, x):
        n = x.shape[0]
        return {"sigma": torch.full((n,), self.sigma), "albedo": self.colour.expand(n, 3),
                "normals": torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)}


def test_uniform_medium_opacity_is_beer_lambert_over_the_chord():
    sigma, bound = 0.8, 0.5
    grid = OccupancyGrid(8, bound, threshold=0.1, decay=0.95)
    grid.estimates.fill_(1.0)  # every cell occupied
    cameras = orbit_cameras([0.0, 37.0], polar_deg=[90.0, 60.0], radius=2.0, width=8, height=8)
    settings = RenderSettings(samples=256, bound=bound)
    out = render(ConstantField(sigma, [0.2, 0.4, 0.6]), grid, Background("white"), cameras, settings)
    origins, dirs = cameras.rays()
    near, far = ray_box(origins.reshape(-1, 3), dirs.reshape(-1, 3), bound)
    expected = 1.0 - torch.exp(-sigma * (far - near).clamp_min(0))
    assert torch.allclose(out.opacity.reshape(-1), expected, atol=2e-3)
    assert float(expected.max()) > 0.5  # the rays do cross the medium
    # Colour = albedo * opacity + white * (1 - opacity).
    colour = torch.tensor([0.2, 0.4, 0.6])
    expected_rgb = colour * expected[:, None] + (1 - expected[:, None])
    assert torch.allclose(out.image.permute(0, 2, 3, 1).reshape(-1, 3), expected_rgb, atol=2e-3)


def test_unoccupied_cells_are_skipped_entirely():
    grid = OccupancyGrid(8, 0.5, threshold=0.1, decay=0.95)  # all estimates 0: nothing occupied
    cameras = orbit_cameras([0.0], radius=2.0, width=8, height=8)
    out = render(ConstantField(5.0, [1.0, 0.0, 0.0]), grid, Background("white"), cameras,
                 RenderSettings(samples=32, bound=0.5))
    assert out.samples_evaluated == 0 and float(out.opacity.max()) == 0.0
    assert torch.equal(out.image, torch.ones_like(out.image))


def test_shading_modes():
    albedo = torch.tensor([[0.5, 0.2, 1.0]])
    normal = torch.tensor([[0.0, 0.0, 1.0]])
    facing, grazing = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    assert torch.allclose(shade("albedo", albedo, normal, grazing, 0.3), albedo)
    assert torch.allclose(shade("lambertian", albedo, normal, facing, 0.3), albedo)
    assert torch.allclose(shade("lambertian", albedo, normal, grazing, 0.3), 0.3 * albedo)
    tilted = torch.tensor([[0.0, math.sin(math.pi / 3), math.cos(math.pi / 3)]])
    assert torch.allclose(shade("textureless", albedo, normal, tilted, 0.3), torch.full((1, 3), 0.3 + 0.7 * 0.5))
    assert torch.allclose(shade("normal", albedo, normal, facing, 0.3), torch.tensor([[0.5, 0.5, 1.0]]))


def test_density_is_the_prior_residual_and_gradient_normals_point_outwards():
    prior = SpherePrior(radius=0.6)
    field = HeadField(preset_config("tiny").coarse, prior)
    gen = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen), dim=-1)
    with torch.no_grad():
        h0 = field.mlp_outputs(dirs * 0.6)[:, 3]
        # Eq. 2: sigma = softplus(h0 + sigma_bar).
        assert torch.allclose(field.density(dirs * 0.6), torch.nn.functional.softplus(h0 + prior.density(dirs * 0.6)))
        normals = field.gradient_normals(dirs * 0.6, eps=5e-3)
    assert float((normals * dirs).sum(-1).min()) > 0.99


def test_backgrounds():
    dirs = torch.nn.functional.normalize(torch.randn(2, 5, 3), dim=-1)
    gen = torch.Generator().manual_seed(0)
    random = Background("random")(dirs, generator=gen)
    assert random.shape == (2, 5, 3)
    assert torch.equal(random[:, :1].expand_as(random), random)  # one solid colour per view
    assert not torch.equal(random[0], random[1])
    assert torch.equal(Background("random")(dirs, training=False), torch.ones_like(dirs))  # previews: white
    learned = Background("mlp")
    out = learned(dirs).detach()
    assert out.shape == (2, 5, 3) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert sum(p.numel() for p in learned.parameters()) > 0
