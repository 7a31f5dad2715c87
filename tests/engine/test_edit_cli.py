"""`headsculpt generate --guidance ssd` and `headsculpt edit` end to end on the CPU with the tiny models."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from headsculpt_engine import pipeline
from headsculpt_engine.config import preset_config
from headsculpt_engine.errors import InputError
from headsculpt_engine.stages.loop import load_checkpoint

TINY = ["--preset", "tiny", "--models", "tiny", "--device", "cpu", "--set", "fine.iterations=2"]


def headsculpt(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "headsculpt_engine", *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ssd_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "ssd"
    headsculpt("generate", "--prompt", "a head of an old man", "--guidance", "ssd", *TINY,
               "--set", "fine.ssd_geometry_iterations=2", "--set", "fine.ssd_texture_iterations=2", "--out", str(run))
    return run


@pytest.fixture(scope="module")
def sds_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "sds"
    headsculpt("generate", "--prompt", "a head of an old man", *TINY, "--set", "coarse.iterations=2", "--out", str(run))
    return run


@pytest.mark.slow
def test_ssd_generation_runs_both_phases_each_on_its_own_parameters(ssd_run):
    record = json.loads((ssd_run / "run.json").read_text())
    assert record["status"] == "done" and record["guidance"] == "ssd"
    assert {"ssd_geometry", "ssd_texture", "export"} <= set(record["timings"])
    assert not (ssd_run / "coarse").exists()  # SSD starts DMTet from the prior (see pipeline.generate)
    geometry = load_checkpoint(ssd_run / "geometry" / "checkpoint.pt")
    texture = load_checkpoint(ssd_run / "fine" / "checkpoint.pt")
    assert geometry["iteration"] == texture["iteration"] == 2
    # Geometry phase: Adam never stepped a colour parameter (its state is made only for updated ones).
    assert geometry["stage"]["colour_opt"]["state"] == {}
    assert geometry["stage"]["geometry_opt"]["state"] != {}
    # Texture phase: the geometry is bit-identical to the geometry phase's result; the colour trained.
    assert texture["stage"]["geometry_opt"]["state"] == {}
    for key, value in geometry["stage"]["geometry"].items():
        assert torch.equal(texture["stage"]["geometry"][key], value), key
    assert any(not torch.equal(texture["stage"]["colour"][k], v) for k, v in geometry["stage"]["colour"].items())
    assert (ssd_run / "result" / "avatar.glb").is_file()


@pytest.mark.slow
def test_edit_command_exports_an_avatar_that_names_its_parent(sds_run, tmp_path):
    out = tmp_path / "older"
    headsculpt("edit", "--from", str(sds_run), "--instruction", "make him old", "--models", "tiny", "--device", "cpu",
               "--set", "fine.iterations=2", "--out", str(out))
    record = json.loads((out / "run.json").read_text())
    avatar = json.loads((out / "result" / "avatar.json").read_text())
    for description in (record, avatar):
        assert description["kind"] == "edit"
        assert description["parent"] == str(sds_run.resolve())
        assert description["instruction"] == "make him old"
        assert description["edit_mode"] == "iesd"
        assert description["prompt"] == "a head of an old man"
    assert record["preset"] == "tiny"  # taken from the parent
    assert record["config"]["guidance"]["edit_scale"] == 0.6
    assert (out / "result" / "avatar.glb").is_file()
    # The export's mesh hygiene, in run.json as in avatar.json (faces, components, watertightness).
    assert record["mesh"] == avatar["export"]["mesh"]
    assert 0 < record["mesh"]["faces"] <= record["config"]["export"]["target_faces"]
    assert record["mesh"]["components"] >= 1 and isinstance(record["mesh"]["watertight"], bool)
    edited = load_checkpoint(out / "fine" / "checkpoint.pt")["stage"]
    parent = load_checkpoint(sds_run / "fine" / "checkpoint.pt")["stage"]
    assert edited["geometry"]["sdf"].shape == parent["geometry"]["sdf"].shape  # started from the parent
    assert not torch.equal(edited["geometry"]["sdf"], parent["geometry"]["sdf"])


def test_edit_refuses_what_cannot_be_edited(tmp_path):
    cfg = preset_config("tiny")
    with pytest.raises(InputError, match="not a run folder"):
        pipeline.edit(tmp_path, "make him old", cfg, tmp_path / "out")
    (tmp_path / "run.json").write_text(json.dumps({"status": "running", "config": cfg.to_dict()}))
    with pytest.raises(InputError, match="not finished"):
        pipeline.edit(tmp_path, "make him old", cfg, tmp_path / "out")


def test_edit_validates_instruction_scale_and_folder(ssd_run):
    cfg = preset_config("tiny")
    with pytest.raises(InputError, match="instruction is empty"):
        pipeline.edit(ssd_run, "  ", cfg, ssd_run.parent / "x")
    cfg.guidance.edit_scale = 1.5
    with pytest.raises(InputError, match="edit scale"):
        pipeline.edit(ssd_run, "make him old", cfg, ssd_run.parent / "x")
    with pytest.raises(InputError, match="overwrites"):
        pipeline.edit(ssd_run, "make him old", preset_config("tiny"), ssd_run)
    cfg = preset_config("tiny")
    cfg.guidance.kind, cfg.guidance.edit_mode = "ssd", "b5"
    with pytest.raises(InputError, match="ablation"):
        pipeline.edit(ssd_run, "make him old", cfg, ssd_run.parent / "x")


def test_b5_is_iesd_with_full_edit_weight_and_b3_has_no_reference(ssd_run, tmp_path, monkeypatch):
    """The ablation modes reach the stage as the paper defines them (checked at the stage boundary)."""
    from headsculpt_engine.stages import edit as edit_stage

    calls = []

    def fake_run_edit(cfg, prior, guidance, parent_fine_dir, run_dir, callbacks, device, reference):
        predictor = guidance.predictor
        prompt = predictor.identity.prompt if hasattr(predictor, "identity") else predictor.prompt
        calls.append((cfg.guidance.edit_scale, reference, type(predictor).__name__, prompt))
        raise InputError("stop here")

    monkeypatch.setattr(edit_stage, "run_edit", fake_run_edit)
    for mode in ("b5", "b3"):
        cfg = preset_config("tiny")
        cfg.device, cfg.guidance.edit_mode = "cpu", mode
        with pytest.raises(InputError, match="stop here"):
            pipeline.edit(ssd_run, "make him old", cfg, tmp_path / mode)
    assert calls == [(1.0, True, "EditPredictor", "a head of an old man"),
                     (0.6, False, "LandmarkPredictor", "a head of an old man, make him old")]
