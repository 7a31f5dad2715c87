"""Tiny models: deterministic and small; loaded by the same code as the real ids; clear errors."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from headsculpt_engine.config import ModelsConfig, preset_config
from headsculpt_engine.errors import InputError, ModelNotFoundError
from headsculpt_engine.models import loading
from headsculpt_engine.models.loading import load_diffusion_models, models_config_from_cli
from headsculpt_engine.models.tiny import make_tiny_models
from headsculpt_engine.paths import cache_dir


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_tiny_models_is_deterministic_and_small(tmp_path):
    cli = subprocess.run([sys.executable, "-m", "headsculpt_engine", "make-tiny-models", str(tmp_path / "a")],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    make_tiny_models(tmp_path / "b", seed=0)
    make_tiny_models(tmp_path / "c", seed=1)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert set(a) == set(c) and a != c  # the seed matters
    # The real diffusers layout, face ControlNet in its subfolder as CrucibleAI/ControlNetMediaPipeFace.
    for name in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                 "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json",
                 "face-controlnet/diffusion_sd15/config.json", "ip2p-controlnet/config.json"):
        assert name in a, name
    assert sum(len(v) for v in a.values()) < 5_000_000


def test_tiny_models_load_through_the_pretrained_path(monkeypatch):
    calls = []
    real = loading.from_pretrained_offline

    def spy(cls, name, subfolder, allow_download, **kwargs):
        calls.append((cls.__name__, name, subfolder, allow_download))
        return real(cls, name, subfolder, allow_download, **kwargs)

    monkeypatch.setattr(loading, "from_pretrained_offline", spy)
    models = load_diffusion_models(preset_config("tiny").models, "cpu", with_ip2p=True)
    folder = str(loading.tiny_models_dir())
    assert folder == str(cache_dir() / "tiny-models")  # made once, in the engine cache
    assert ("UNet2DConditionModel", folder, "unet", False) in calls
    assert ("ControlNetModel", folder + "/face-controlnet", "diffusion_sd15", False) in calls
    assert ("ControlNetModel", folder + "/ip2p-controlnet", "", False) in calls
    assert type(models.unet).__name__ == "UNet2DConditionModel"
    assert type(models.tokenizer).__name__ == "CLIPTokenizer"
    # SD's scaled_linear schedule, 1000 steps.
    assert len(models.alphas_cumprod) == 1000
    assert models.alphas_cumprod[-1].item() == pytest.approx(0.0047, abs=2e-4)
    assert models.dtype.is_floating_point and str(models.dtype) == "torch.float32"  # fp32 on the CPU
    assert all(not p.requires_grad for p in models.unet.parameters())
    # VAE and ControlNet conditioning downsample alike: a 64x64 render meets a 64x64 control image.
    assert 2 ** (len(models.vae.config.block_out_channels) - 1) == \
        2 ** (len(models.face_controlnet.config.conditioning_embedding_out_channels) - 1)


def test_models_option_values(tmp_path):
    assert models_config_from_cli("tiny").base == "tiny"
    assert models_config_from_cli("default").base == ModelsConfig().base
    folder = loading.tiny_models_dir()
    cfg = models_config_from_cli(str(folder))
    assert cfg.face_controlnet == str(folder / "face-controlnet") and cfg.face_controlnet_subfolder == "diffusion_sd15"
    with pytest.raises(InputError):
        models_config_from_cli(str(tmp_path))


def test_missing_model_id_names_it_and_how_to_get_it():
    cfg = ModelsConfig(base="headsculpt-test/no-such-model-7f3a9c", allow_download=False)
    with pytest.raises(ModelNotFoundError) as info:
        load_diffusion_models(cfg, "cpu")
    message = str(info.value)
    assert "headsculpt-test/no-such-model-7f3a9c" in message
    assert "headsculpt download-models --models headsculpt-test/no-such-model-7f3a9c" in message
    # The first part loaded: transformers alone would make an empty tokenizer without complaint.
    assert "(subfolder tokenizer)" in message


def test_a_tokenizer_without_its_files_is_reported(tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(loading.tiny_models_dir(), folder)
    (folder / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(ModelNotFoundError, match=r"\(subfolder tokenizer\) from its folder \(no merges.txt\)"):
        load_diffusion_models(models_config_from_cli(str(folder)), "cpu")


def test_missing_model_folder_is_reported(tmp_path):
    cfg = ModelsConfig(base=str(tmp_path / "nothing-here"))
    with pytest.raises(ModelNotFoundError, match="nothing-here"):
        load_diffusion_models(cfg, "cpu")
