"""HeadArtist's SSD phases on the fine stage: geometry on normal maps with the colour frozen, texture with
the geometry frozen (bit-identical), t ranges as appendix D gives them; edits move only offsets."""
from __future__ import annotations

import pytest
import torch
from mesh_test_support import SpherePrior, TinyColour, target_renderer

from headsculpt_engine.config import preset_config
from headsculpt_engine.guidance.factory import SsdPhases
from headsculpt_engine.guidance.oracle import oracle_guidance
from headsculpt_engine.stages.fine import run_fine
from headsculpt_engine.stages.loop import load_checkpoint
from headsculpt_engine.stages.ssd import run_ssd

ITERATIONS = 4


def small_config(iterations: int = ITERATIONS):
    cfg = preset_config("tiny")
    cfg.guidance.kind = "ssd"
    cfg.fine.iterations = cfg.fine.ssd_geometry_iterations = cfg.fine.ssd_texture_iterations = iterations
    cfg.guidance.ssd_texture_t_step = iterations // 2
    cfg.fine.resolution = 32
    cfg.fine.tet_resolution = 24
    cfg.fine.batch = 2
    cfg.fine.rasterizer = "torch"
    cfg.fine.checkpoint_every = cfg.fine.preview_every = 0
    return cfg


class PhaseSpy:
    """SsdPhases, with what each call was given recorded."""

    def __init__(self, inner: SsdPhases):
        self.inner = inner
        self.calls = []

    generator = property(lambda self: self.inner.geometry.generator)

    def set_phase(self, phase, iteration=0):
        self.inner.set_phase(phase, iteration)

    def t_range(self):
        return self.inner.t_range()

    def __call__(self, inputs):
        self.calls.append((self.inner.phase, inputs.t_range, inputs.images.detach().clone()))
        return self.inner(inputs)


def oracle_phases(cfg) -> PhaseSpy:
    g = cfg.guidance
    gen = torch.Generator().manual_seed(4)
    target = target_renderer(radius=0.5)
    geometry = oracle_guidance(target, guidance_scale=g.ssd_geometry_scale, generator=gen)
    texture = oracle_guidance(target, guidance_scale=g.ssd_texture_scale, generator=gen)
    geometry.baseline = texture.baseline = "cfg1"  # SSD: eps_cfg - eps_cfg1
    return PhaseSpy(SsdPhases(geometry, texture, g.t_range[0], g.ssd_geometry_t_max, g.ssd_texture_t_max,
                              g.ssd_texture_t_step))


def params(folder):
    return load_checkpoint(folder / "checkpoint.pt")["stage"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ssd_generation_phases_touch_only_their_own_parameters(tmp_path):
    cfg = small_config()
    spy = oracle_phases(cfg)
    result, timings = run_ssd(cfg, SpherePrior(radius=0.42), spy, tmp_path, None, "cpu", colour=TinyColour())
    assert set(timings) == {"ssd_geometry", "ssd_texture"}
    geometry, texture = params(tmp_path / "geometry"), params(tmp_path / "fine")

    # Geometry phase: the shape moved from the prior's, the colour stayed bit-identical.
    start = run_fine(small_config(0), SpherePrior(radius=0.42), None, tmp_path / "start", colour=TinyColour())
    assert same(geometry["colour"], TinyColour().state_dict())
    assert not torch.equal(geometry["geometry"]["deform"], torch.zeros_like(geometry["geometry"]["deform"]))
    assert result.vertices.shape != start.vertices.shape or not torch.equal(result.vertices, start.vertices)
    # Texture phase: the geometry is bit-identical to the geometry phase's, the colour changed.
    assert same(texture["geometry"], geometry["geometry"])
    assert not same(texture["colour"], geometry["colour"])

    phases = [phase for phase, _, _ in spy.calls]
    assert phases == ["geometry"] * ITERATIONS + ["texture"] * ITERATIONS
    geometry_ranges = {t for phase, t, _ in spy.calls if phase == "geometry"}
    assert geometry_ranges == {(0.02, 0.5)}
    texture_t_max = [t[1] for phase, t, _ in spy.calls if phase == "texture"]
    assert texture_t_max == pytest.approx([0.98, 0.98, 0.7, 0.7])  # stepped at iteration 2 of 4

    # The geometry phase sees normal maps: covered pixels hold unit vectors n / 2 + 1/2.
    for phase, _, images in spy.calls:
        n = images * 2 - 1
        covered = (images < 0.99).any(dim=1)  # not the white background
        lengths = n.norm(dim=1)[covered]
        unit = ((lengths - 1).abs() < 0.05).float().mean()
        assert (unit > 0.8) if phase == "geometry" else (unit < 0.5), (phase, float(unit))


def test_ssd_edit_keeps_the_parent_sdf_and_moves_offsets(tmp_path):
    prior = SpherePrior(radius=0.42)
    parent_cfg = small_config(2)
    parent_cfg.guidance.kind = "sds"
    run_fine(parent_cfg, prior, oracle_guidance(target_renderer(0.5), generator=torch.Generator().manual_seed(1)),
             tmp_path / "parent", colour=TinyColour())
    parent = params(tmp_path / "parent")

    cfg = small_config(2)
    run_ssd(cfg, prior, oracle_phases(cfg), tmp_path / "edit", None, "cpu", init_from=tmp_path / "parent",
            colour=TinyColour())
    geometry = params(tmp_path / "edit" / "geometry")
    assert torch.equal(geometry["geometry"]["sdf"], parent["geometry"]["sdf"])
    assert not torch.equal(geometry["geometry"]["deform"], parent["geometry"]["deform"])
    assert same(geometry["colour"], parent["colour"])
    assert same(params(tmp_path / "edit" / "fine")["geometry"], geometry["geometry"])
