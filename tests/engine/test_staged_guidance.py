"""StagedGuidance: M_pi from the very cameras of the trained render, without gradients."""
import pytest
import torch

from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.guidance.base import Guidance, GuidanceInputs, GuidanceOutput
from headsculpt_engine.guidance.staged import StagedGuidance


class Recorder(Guidance):
    def __init__(self):
        self.inputs = []

    def __call__(self, inputs):
        self.inputs.append(inputs)
        loss = (inputs.images ** 2).sum()
        return GuidanceOutput(loss=loss, grad=inputs.images.detach(), timesteps=torch.zeros(len(inputs.images)))


def test_reference_is_rendered_without_gradients_from_the_same_cameras():
    cams = orbit_cameras([10.0, 100.0, 190.0], polar_deg=[80.0, 70.0, 95.0], radius=1.2, width=12, height=10)
    seen = []
    weight = torch.tensor(0.7, requires_grad=True)

    def reference(cameras):
        seen.append(cameras)
        assert not torch.is_grad_enabled()
        return (weight * torch.ones(len(cameras), 3, cameras.height, cameras.width))

    inner = Recorder()
    images = torch.rand(3, 3, 10, 12, requires_grad=True)
    StagedGuidance(inner, reference=reference)(GuidanceInputs(images=images, cameras=cams))
    assert seen == [cams]
    passed = inner.inputs[0]
    assert passed.images is images and passed.cameras is cams
    assert torch.allclose(passed.reference_images, torch.full((3, 3, 10, 12), 0.7))
    assert not passed.reference_images.requires_grad


def test_a_reference_of_another_size_is_refused():
    cams = orbit_cameras([0.0], width=8, height=8)
    guidance = StagedGuidance(Recorder(), reference=lambda c: torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="same cameras"):
        guidance(GuidanceInputs(images=torch.zeros(1, 3, 8, 8), cameras=cams))


class Phases(Recorder):
    """The phase interface of guidance.factory.SsdPhases, recorded."""

    def __init__(self):
        super().__init__()
        self.phases = []

    def set_phase(self, phase, iteration=0):
        self.phases.append((phase, iteration))

    def t_range(self):
        return (0.02, 0.98 - 0.07 * self.phases[-1][1])


def test_ssd_phase_follows_the_iteration():
    inner = Phases()
    guidance = StagedGuidance(inner, ssd_phase="texture")
    cams = orbit_cameras([0.0], width=4, height=4)

    def step(iteration):
        guidance.start_iteration(iteration)
        guidance(GuidanceInputs(images=torch.zeros(1, 3, 4, 4), cameras=cams, t_range=(0.02, 0.5)))

    step(4)
    assert inner.phases[-1] == ("texture", 4)
    assert inner.inputs[-1].t_range == pytest.approx((0.02, 0.7))
    step(2)
    assert inner.phases[-1] == ("texture", 2)
    assert inner.inputs[-1].t_range == pytest.approx((0.02, 0.84))
    with pytest.raises(ValueError, match="not SSD"):
        StagedGuidance(Recorder(), ssd_phase="geometry")
