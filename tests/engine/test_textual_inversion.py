"""The `<back-view>` token (issue 7): images, training, the saved file, prompts, resume, the CLI.

Everything runs on the CPU with the tiny random models at 32x32 (latents 16x16).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headsculpt_engine.errors import Cancelled, InputError
from headsculpt_engine.models.textual_inversion import (TokenTrainer, TokenTrainingConfig, load_token_models,
                                                        train_token)
from headsculpt_engine.models.token_images import load_training_images
from headsculpt_engine.stages.loop import RunCallbacks

RES = 32
TOKEN = "<back-view>"


def _head_back(size: tuple[int, int], seed: int) -> Image.Image:
    """A synthetic 'back of a head': a dark ellipse of hair on a light, noisy background."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    inside = ((x - w / 2) / (0.35 * w)) ** 2 + ((y - h * 0.55) / (0.4 * h)) ** 2 < 1
    hair = rng.uniform(20, 90, 3)
    background = rng.uniform(170, 240, 3)
    image = np.where(inside[..., None], hair, background) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """Five photos of different sizes and formats, and one file that is not an image."""
    folder = tmp_path_factory.mktemp("backs")
    sizes = [(48, 40), (64, 64), (80, 50), (40, 72), (56, 56)]
    for i, size in enumerate(sizes):
        _head_back(size, i).save(folder / f"back_{i}.{('png', 'jpg', 'webp', 'bmp', 'png')[i]}")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def pixels(image_dir) -> torch.Tensor:
    return load_training_images(image_dir, RES).pixels


def _cfg(**overrides) -> TokenTrainingConfig:
    settings = dict(steps=40, lr=5e-2, batch=4, resolution=RES, seed=7, checkpoint_every=10)
    settings.update(overrides)
    return TokenTrainingConfig(**settings)


def _models():
    models, device, models_id = load_token_models("tiny", "cpu")
    return models, models_id


# -- images --------------------------------------------------------------------------------------

def test_images_any_size_and_format_are_centre_cropped_and_resized(image_dir, tmp_path):
    images = load_training_images(image_dir, RES)
    assert images.pixels.shape == (5, 3, RES, RES)
    assert images.pixels.min() >= -1 and images.pixels.max() <= 1
    assert [p.name for p, _ in images.skipped] == ["notes.txt"]
    # A wide picture in thirds red | green | blue: the centre crop keeps only the green third.
    thirds = np.zeros((30, 90, 3), np.uint8)
    thirds[:, :30, 0] = thirds[:, 30:60, 1] = thirds[:, 60:, 2] = 255
    folder = tmp_path / "thirds"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(thirds).save(folder / f"t{i}.png")
    # (The outermost columns may blend in a little of the neighbours through the bicubic filter.)
    crop = load_training_images(folder, 16).pixels[0, :, :, 1:-1]
    assert torch.allclose(crop[1], torch.ones(16, 14), atol=1e-2)  # green everywhere
    assert torch.allclose(crop[[0, 2]], -torch.ones(2, 16, 14), atol=1e-2)  # no red, no blue


def test_too_few_usable_images_is_an_input_error(tmp_path):
    _head_back((40, 40), 0).save(tmp_path / "a.png")
    _head_back((40, 40), 1).save(tmp_path / "b.jpg")
    (tmp_path / "c.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(InputError, match="Only 2 usable image"):
        load_training_images(tmp_path, RES)
    with pytest.raises(InputError, match="does not exist"):
        load_training_images(tmp_path / "missing", RES)


# -- acceptance 1: the loss falls, and nothing but the new row changes ------------------------------

def test_training_lowers_the_loss_and_changes_only_the_new_row(pixels):
    models, _ = _models()
    frozen = {name: {k: v.clone() for k, v in getattr(models, name).state_dict().items()}
              for name in ("unet", "vae", "text_encoder")}
    old_vocab = len(models.tokenizer)
    [back_id] = models.tokenizer.encode("back", add_special_tokens=False)
    table_weight = models.text_encoder.get_input_embeddings().weight
    [key] = [k for k, v in models.text_encoder.named_parameters() if v is table_weight]

    trainer = TokenTrainer(models, pixels, _cfg())
    assert torch.equal(trainer.initial_vector, frozen["text_encoder"][key][back_id])
    before = trainer.evaluation_loss()
    for i in range(trainer.total_iterations):
        trainer.step(i)
    after = trainer.evaluation_loss()
    assert after < 0.999 * before, (before, after)
    assert trainer.evaluation_loss(trainer.initial_vector) == before  # the fixed set is fixed

    for name in ("unet", "vae"):
        now = getattr(models, name).state_dict()
        assert now.keys() == frozen[name].keys()
        changed = [k for k in now if not torch.equal(now[k], frozen[name][k])]
        assert changed == [], f"{name} weights changed: {changed[:5]}"
    now = models.text_encoder.state_dict()
    changed = [k for k in now if k != key and not torch.equal(now[k], frozen["text_encoder"][k])]
    assert changed == [], f"text encoder weights changed: {changed[:5]}"
    table = now[key]
    assert table.shape[0] == old_vocab + 1 and trainer.token_id == old_vocab
    assert torch.equal(table[:old_vocab], frozen["text_encoder"][key])  # every other row, bit for bit
    assert torch.equal(table[trainer.token_id], trainer.learned_vector())
    assert not torch.equal(trainer.learned_vector(), trainer.initial_vector)


def test_half_precision_models_train_with_loss_scaling(pixels, tmp_path):
    """The CUDA set-up (UNet and VAE in float16, text encoder and row in float32), here on the CPU."""
    models, models_id = _models()
    models.unet.half()
    models.vae.half()
    trainer = TokenTrainer(models, pixels, _cfg(steps=10))
    assert trainer.scaler.is_enabled() and trainer.vector.dtype == torch.float32
    assert models.text_encoder.dtype == torch.float32
    before = trainer.evaluation_loss()
    for i in range(trainer.total_iterations):
        trainer.step(i)
    assert trainer.evaluation_loss() < 0.999 * before
    assert torch.isfinite(trainer.learned_vector()).all()
    state = trainer.state_dict()
    assert state["scaler"]["scale"] == trainer.scaler.get_scale() > 1


def test_bad_token_or_init_word_is_an_input_error(pixels):
    models, _ = _models()
    with pytest.raises(InputError, match="init word"):
        TokenTrainer(models, pixels, _cfg(init_word="backview portrait"))
    models, _ = _models()
    models.tokenizer.add_tokens(TOKEN)  # e.g. a tokenizer that has loaded a token file already
    with pytest.raises(InputError, match="already a word"):
        TokenTrainer(models, pixels, _cfg())


# -- acceptance 2: diffusers loads the file ------------------------------------------------------

def test_saved_file_loads_through_diffusers_load_textual_inversion(pixels, tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from headsculpt_engine.models.loading import tiny_models_dir

    models, models_id = _models()
    out = tmp_path / "back-view.safetensors"
    trainer = train_token(models, pixels, _cfg(steps=6, checkpoint_every=3), out, tmp_path / "ckpt",
                          models_id=models_id)
    saved = load_file(out)
    assert list(saved) == [TOKEN] and saved[TOKEN].shape == (1, trainer.learned_vector().numel())

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models_dir(), safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    assert TOKEN not in pipe.tokenizer.get_vocab()
    pipe.load_textual_inversion(str(out))
    token_id = pipe.tokenizer.convert_tokens_to_ids(TOKEN)
    assert pipe.tokenizer(f"a head, {TOKEN}").input_ids.count(token_id) == 1  # one token, not split
    row = pipe.text_encoder.get_input_embeddings().weight[token_id]
    assert torch.equal(row, trainer.learned_vector())
    # The snapshots written with each checkpoint load the same way.
    assert sorted(p.name for p in (tmp_path / "ckpt" / "previews").iterdir()) == [
        "embedding-step-000003.safetensors", "embedding-step-000006.safetensors"]


# -- acceptance 3: back views say the token when a file is configured -------------------------------

def test_back_view_prompts_use_the_token_only_when_configured(pixels, tmp_path):
    from headsculpt_engine.cameras import orbit_cameras
    from headsculpt_engine.config import ModelsConfig
    from headsculpt_engine.models.loading import load_diffusion_models

    models, models_id = _models()
    out = tmp_path / "back-view.safetensors"
    trainer = train_token(models, pixels, _cfg(steps=4, checkpoint_every=4), out, tmp_path / "ckpt",
                          models_id=models_id)
    trainer.close()
    cameras = orbit_cameras([0.0, 20.0, 90.0, 180.0, 200.0, 270.0])
    views = cameras.view_names()
    assert views == ["front", "front", "side", "back", "back", "side"]
    prompt = "a DSLR portrait of an old man"

    plain = load_diffusion_models(ModelsConfig(base="tiny"), "cpu").prompts.view_prompts(prompt, views)
    assert plain[3] == plain[4] == f"{prompt}, back view"
    assert all(TOKEN not in p for p in plain)

    loaded = load_diffusion_models(ModelsConfig(base="tiny", back_view_token_file=str(out)), "cpu")
    prompts = loaded.prompts.view_prompts(prompt, views)
    for i, view in enumerate(views):
        if view == "back":
            assert TOKEN in prompts[i] and "back view" not in prompts[i]
        else:
            assert TOKEN not in prompts[i] and prompts[i] == plain[i]
    # The text embedding the guidance gets is that of the trained token.
    token_id = loaded.tokenizer.convert_tokens_to_ids(TOKEN)
    assert torch.equal(loaded.text_encoder.get_input_embeddings().weight[token_id], trainer.learned_vector())
    ids = trainer.models.tokenizer(prompts[3], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert token_id in ids[0].tolist()
    with torch.no_grad():
        expected = trainer.models.text_encoder(ids)[0][0]
    assert torch.allclose(loaded.prompts.embed([prompts[3]])[0], expected, atol=1e-6)


# -- acceptance 4: interrupt and resume gives the same embedding ------------------------------------

def test_interrupted_and_resumed_training_is_bit_identical(pixels, tmp_path):
    cfg = _cfg(steps=12, checkpoint_every=4)
    models, models_id = _models()
    straight = train_token(models, pixels, cfg, tmp_path / "a.safetensors", tmp_path / "a", models_id=models_id)

    seen: list[int] = []
    callbacks = RunCallbacks(on_progress=lambda p: seen.append(p.iteration), should_cancel=lambda: len(seen) > 6)
    models, models_id = _models()
    with pytest.raises(Cancelled):
        train_token(models, pixels, cfg, tmp_path / "b.safetensors", tmp_path / "b", callbacks, models_id=models_id)
    assert not (tmp_path / "b.safetensors").exists()
    stopped_at = seen[-1]
    assert 0 < stopped_at < cfg.steps and stopped_at % cfg.checkpoint_every != 0  # between checkpoints

    resumed_from: list[int] = []
    callbacks = RunCallbacks(on_progress=lambda p: resumed_from.append(p.iteration))
    models, models_id = _models()  # a fresh process would load the models afresh
    resumed = train_token(models, pixels, cfg, tmp_path / "b.safetensors", tmp_path / "b", callbacks,
                          models_id=models_id)
    assert resumed_from[0] == stopped_at  # it continued, it did not start again
    assert torch.equal(resumed.learned_vector(), straight.learned_vector())
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_resuming_with_other_settings_is_refused_and_longer_training_continues(pixels, tmp_path):
    models, models_id = _models()
    train_token(models, pixels, _cfg(steps=2, checkpoint_every=1), tmp_path / "a.safetensors", tmp_path / "a",
                models_id=models_id)
    models, models_id = _models()
    with pytest.raises(InputError, match="lr"):
        train_token(models, pixels, _cfg(steps=4, lr=1e-3, checkpoint_every=1), tmp_path / "a.safetensors",
                    tmp_path / "a", models_id=models_id)
    with pytest.raises(InputError, match="past --steps 1"):
        train_token(models, pixels, _cfg(steps=1, checkpoint_every=1), tmp_path / "a.safetensors",
                    tmp_path / "a", models_id=models_id)
    # More steps than before is fine: training goes on from the checkpoint.
    seen: list[int] = []
    models, models_id = _models()
    train_token(models, pixels, _cfg(steps=3, checkpoint_every=1), tmp_path / "a.safetensors", tmp_path / "a",
                RunCallbacks(on_progress=lambda p: seen.append(p.iteration)), models_id=models_id)
    assert seen == [2, 3]


# -- the command ---------------------------------------------------------------------------------

def test_learn_token_command(image_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from headsculpt_engine.cli import main

    out = tmp_path / "token" / "back-view.safetensors"
    code = main(["learn-token", "--images", str(image_dir), "--out", str(out), "--models", "tiny", "--steps", "4",
                 "--batch", "2", "--resolution", str(RES), "--checkpoint-every", "2", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "skipped" in captured.err and "notes.txt" in captured.err
    assert "4/4" in captured.err  # the progress bar reached the end
    assert out.is_file() and (tmp_path / "token" / "back-view-checkpoints" / "checkpoint.pt").is_file()
    assert list(load_file(out)) == [TOKEN]

    too_few = tmp_path / "few"
    too_few.mkdir()
    _head_back((40, 40), 0).save(too_few / "a.png")
    code = main(["learn-token", "--images", str(too_few), "--out", str(tmp_path / "x.safetensors"), "--models", "tiny"])
    assert code == 2 and "at least 3" in capsys.readouterr().err
