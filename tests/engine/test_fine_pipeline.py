"""The fine stage and export with the real parts around them: the built-in head prior, the coarse
stage's HeadField (from a tiny coarse run, and fresh), at the tiny preset's settings."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import trimesh

from headsculpt_engine.config import preset_config
from headsculpt_engine.guidance.oracle import oracle_guidance
from headsculpt_engine.mesh.export import export_avatar
from headsculpt_engine.nerf.field import HeadField
from headsculpt_engine.prior import builtin_prior
from headsculpt_engine.stages.coarse import run_coarse
from headsculpt_engine.stages.fine import run_fine


def grey(cameras):
    return torch.full((len(cameras), 3, cameras.height, cameras.width), 0.5)


@pytest.mark.slow
def test_tiny_preset_coarse_to_fine_to_export(tmp_path):
    prior = builtin_prior()
    cfg = preset_config("tiny")
    cfg.coarse.warmup_shading = "albedo"  # the oracle compares RGB pixels; a normal warm-up hands it latents
    guidance = oracle_guidance(grey, generator=torch.Generator().manual_seed(0))
    run_coarse(cfg, prior, guidance, tmp_path / "coarse", None, torch.device("cpu"))

    started = time.perf_counter()
    fine = run_fine(cfg, prior, guidance, tmp_path / "fine", None, torch.device("cpu"), coarse_dir=tmp_path / "coarse")
    files = export_avatar(fine, prior, cfg.export, tmp_path / "result", {"prompt": "tiny"})
    assert time.perf_counter() - started < 60.0
    assert isinstance(fine.colour, HeadField)
    assert fine.faces.shape[0] > 1000
    assert len(list((tmp_path / "fine" / "previews").glob("*.png"))) == 2

    # The exported head sits on the prior: inside its bounding box enlarged by 10%.
    mesh = trimesh.load(tmp_path / "result" / "avatar.glb", force="mesh")
    canon = prior.transform.to_canonical(prior.vertices.astype(np.float64))
    lo, hi = canon.min(0), canon.max(0)
    margin = 0.1 * (hi - lo) / 2
    assert np.all(mesh.vertices >= lo - margin) and np.all(mesh.vertices <= hi + margin)
    assert mesh.visual.material.baseColorTexture.size == (cfg.export.texture_size,) * 2
    assert (tmp_path / "result" / "avatar.obj") in files


def test_without_coarse_run_a_fresh_head_field_colours_the_prior_surface(tmp_path):
    prior = builtin_prior()
    cfg = preset_config("tiny")
    cfg.fine.iterations = 0
    fine = run_fine(cfg, prior, None, tmp_path / "fine", None, torch.device("cpu"))
    assert isinstance(fine.colour, HeadField)
    # Marching tetrahedra on the prior's SDF lands on the prior's surface: typically far inside a grid
    # cell, and within half a cell at thin features (ears, nose) that a cell cannot resolve.
    cell = 2.0 * cfg.coarse.bound / cfg.fine.tet_resolution
    dist = prior.signed_distance(fine.vertices).abs()
    assert float(dist.median()) < 0.1 * cell and float(dist.max()) < 0.5 * cell
