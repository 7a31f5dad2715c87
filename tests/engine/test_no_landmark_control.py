"""Issue 14, `--landmarks none`: no face ControlNet is loaded, and the guidance predicts every view
(front, sides and back) with the plain UNet and view prompts; the model download skips it too."""
from __future__ import annotations

import torch

from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.config import ModelsConfig, preset_config
from headsculpt_engine.guidance.base import GuidanceInputs
from headsculpt_engine.guidance.factory import build_guidance
from headsculpt_engine.models.download import model_specs
from headsculpt_engine.models.loading import load_diffusion_models
from headsculpt_engine.pipeline import NO_LANDMARK_CONTROL, landmark_control


def test_no_landmark_control_needs_no_face_controlnet_and_guides_every_view_without_it():
    cfg = preset_config("tiny")
    cfg.prompt, cfg.guidance.landmarks = "a monkey", "none"
    models = load_diffusion_models(cfg.models, "cpu", with_face=False)
    assert models.face_controlnet is None
    guidance = build_guidance(cfg, models)
    cameras = orbit_cameras([0.0, 90.0, 180.0, 270.0], width=32, height=32)
    inputs = GuidanceInputs(images=torch.rand(4, 3, 32, 32, requires_grad=True), cameras=cameras, landmark_maps=None)
    branches = guidance.predictor.branches(inputs)
    assert all(branch.controls == () for branch in branches)  # no ControlNet on any row
    out = guidance(inputs)
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    assert landmark_control(cfg) == NO_LANDMARK_CONTROL == "no landmark control: expect weaker view consistency"


def test_the_face_controlnet_is_not_downloaded_without_landmark_control():
    names = {spec.repo_id for spec in model_specs(ModelsConfig(), with_ip2p=False, with_face=False)}
    assert ModelsConfig().face_controlnet not in names and ModelsConfig().base in names
    assert ModelsConfig().face_controlnet in {spec.repo_id for spec in model_specs(ModelsConfig(), with_ip2p=False)}
