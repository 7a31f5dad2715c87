"""StyleAvatar3D's styles and image prompt (issue 18): LoRAs in the UNet and an IP-Adapter image prompt,
with the tiny models, loaded through the same code as the real ones."""
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from headsculpt_engine import pipeline
from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.config import preset_config
from headsculpt_engine.errors import InputError
from headsculpt_engine.guidance.base import GuidanceInputs
from headsculpt_engine.guidance.factory import build_guidance
from headsculpt_engine.models.loading import load_diffusion_models, tiny_models_dir
from headsculpt_engine.models.lora import LORA_WEIGHTS
from headsculpt_engine.models.tiny import TINY_LORA_DIR
from headsculpt_engine.prior import builtin_prior

RES = 32


def tiny_models(loras=(), scales=(), image=False):
    cfg = dataclasses.replace(preset_config("tiny").models, loras=tuple(loras), lora_scales=tuple(scales))
    return load_diffusion_models(cfg, "cpu", with_image_prompt=image)


def unet_eps(models) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    noisy, text = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 77, 32, generator=gen)
    with torch.no_grad():
        return models.unet(noisy, torch.tensor([300, 700]), encoder_hidden_states=text).sample


@pytest.fixture(scope="module")
def tiny_lora():
    return str(tiny_models_dir() / TINY_LORA_DIR)


def test_lora_changes_the_unet_prediction_and_scale_zero_restores_it_exactly(tiny_lora):
    plain = unet_eps(tiny_models())
    styled_models = tiny_models([tiny_lora], [1.0])
    styled = unet_eps(styled_models)
    assert (styled - plain).abs().max() > 1e-3
    assert torch.equal(unet_eps(tiny_models([tiny_lora], [0.0])), plain)
    # Half the scale moves the prediction, but less far.
    half = unet_eps(tiny_models([tiny_lora], [0.5]))
    assert 0 < (half - plain).abs().max() < (styled - plain).abs().max()
    (lora,) = styled_models.loras
    assert lora.file.endswith(LORA_WEIGHTS) and len(lora.sha256) == 64 and lora.scale == 1.0


def test_a_kohya_lora_acts_as_the_same_lora_in_diffusers_format(tiny_lora, tmp_path):
    """Most LoRAs artists download (Civitai, A1111) are in kohya's naming (lora_unet_..._to_k.lora_down,
    .alpha); made here from the tiny LoRA by diffusers' own converters, it must style the UNet alike."""
    from diffusers.utils import convert_state_dict_to_kohya, convert_unet_state_dict_to_peft

    state = load_file(str(Path(tiny_lora) / LORA_WEIGHTS))
    peft = convert_unet_state_dict_to_peft({key[len("unet."):]: value for key, value in state.items()})
    kohya = {f"lora_unet_{key}": value.contiguous() for key, value in convert_state_dict_to_kohya(peft).items()}
    assert any(key.endswith(".lora_down.weight") for key in kohya) and any(key.endswith(".alpha") for key in kohya)
    # Such files usually carry a text-encoder part too, which the engine leaves out (docs/fidelity.md).
    text_encoder = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    kohya |= {f"{text_encoder}.lora_down.weight": torch.ones(4, 32), f"{text_encoder}.lora_up.weight": torch.ones(32, 4),
              f"{text_encoder}.alpha": torch.tensor(4.0)}
    path = tmp_path / "civitai-style.safetensors"
    save_file(kohya, str(path))

    plain, styled = unet_eps(tiny_models()), unet_eps(tiny_models([tiny_lora], [0.8]))
    as_kohya = unet_eps(tiny_models([str(path)], [0.8]))
    assert (styled - plain).abs().max() > 1e-3
    torch.testing.assert_close(as_kohya, styled, rtol=1e-4, atol=1e-5)


def foreign_lora(tmp_path, kind: str) -> str:
    """The tiny LoRA made unfit: wrong shapes (another cross-attention width), or a layer this UNet lacks."""
    state = load_file(str(tiny_models_dir() / TINY_LORA_DIR / LORA_WEIGHTS))
    key = next(k for k in state if "attn2.to_k.lora.down" in k)
    if kind == "shapes":
        state[key] = torch.zeros(state[key].shape[0], 768)
    else:
        state[key.replace("down_blocks.0", "down_blocks.3")] = state.pop(key)
    path = tmp_path / f"{kind}.safetensors"
    save_file(state, str(path))
    return str(path)


def tiny_run_config(**guidance):
    cfg = preset_config("tiny")
    cfg.prompt = "a DSLR portrait of a clown"
    cfg.coarse.iterations = 1
    for key, value in guidance.items():
        setattr(cfg.guidance, key, value)
    return cfg


@pytest.mark.parametrize("kind", ["shapes", "layers"])
def test_a_lora_for_another_architecture_gets_a_sentence_and_nothing_is_written(tmp_path, kind):
    cfg = tiny_run_config()
    cfg.models.loras, cfg.models.lora_scales = (foreign_lora(tmp_path, kind),), (1.0,)
    run_dir = tmp_path / "run"
    with pytest.raises(InputError, match="is for another architecture") as error:
        pipeline.generate(cfg, builtin_prior(), run_dir, stages=("coarse",))
    assert "Traceback" not in str(error.value) and not run_dir.exists()


def write_image(path, colour) -> str:
    gen = torch.Generator().manual_seed(sum(colour))
    pixels = (torch.tensor(colour, dtype=torch.float32) * 0.7 + torch.rand(48, 48, 3, generator=gen) * 60)
    Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy()).save(path)
    return str(path)


@pytest.fixture(scope="module")
def step():
    """One guidance step's inputs: front, side, back and side cameras, noisy latents, landmark maps."""
    gen = torch.Generator().manual_seed(5)
    cams = orbit_cameras([0.0, 90.0, 180.0, 270.0], width=48, height=48)
    maps = torch.zeros(4, 3, RES, RES)
    maps[:2, 1, 8:24, 10:22] = 0.8
    noisy, latents = torch.randn(4, 4, 16, 16, generator=gen), torch.randn(4, 4, 16, 16, generator=gen)
    inputs = GuidanceInputs(images=torch.rand(4, 3, 48, 48, generator=gen), cameras=cams, landmark_maps=maps)
    return noisy, torch.tensor([200, 400, 600, 800]), latents, inputs


def predict(models, step, **guidance):
    cfg = tiny_run_config(resolution=RES, **guidance)
    with torch.no_grad():
        return build_guidance(cfg, models).predictor(*step)


def test_image_prompt_changes_the_guidance_prediction_and_scale_zero_restores_it(tmp_path, step):
    image = write_image(tmp_path / "ref.png", (200, 40, 40))
    plain = predict(tiny_models(), step)
    with_adapter = tiny_models(image=True)
    guided = predict(with_adapter, step, image=image, image_scale=1.0)
    front, back = 0, 2
    for text_only, imaged in ((plain.cond, guided.cond), (plain.uncond, guided.uncond)):
        assert (imaged[front] - text_only[front]).abs().max() > 1e-3
        # Back views take the back scale, 0 by default: the text-only prediction. They go through their
        # own, smaller UNet call (one call per scale), so only float rounding may differ.
        assert torch.allclose(imaged[back], text_only[back], rtol=0, atol=1e-5)
    other = predict(with_adapter, step, image=write_image(tmp_path / "other.png", (20, 40, 220)), image_scale=1.0)
    assert (other.cond[front] - guided.cond[front]).abs().max() > 1e-4
    off = predict(with_adapter, step, image=image, image_scale=0.0)
    assert torch.equal(off.cond, plain.cond) and torch.equal(off.uncond, plain.uncond)


def artists_image(path, kind: str) -> str:
    """Reference images as artists have them: a character cut out on transparency (the colours under
    the alpha are red), the same as a palette image, a 16-bit grey scan (a ramp from black to white),
    a phone photo stored sideways with its EXIF orientation."""
    import numpy as np

    if kind == "16-bit grey":
        Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(path)
        return str(path)
    if kind == "phone photo":  # stored sideways, 16x8, with the EXIF tag that turns it upright, 8x16
        stored = np.zeros((8, 16, 3), np.uint8)
        stored[:, :8] = (0, 0, 255)
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to view
        Image.fromarray(stored).save(path, format="JPEG", quality=95, exif=exif)
        return str(path)
    pixels = np.zeros((8, 8, 4), np.uint8)
    pixels[:, :4] = (0, 0, 255, 255)  # opaque blue on the left
    pixels[:, 4:] = (255, 0, 0, 0)    # transparent red on the right
    image = Image.fromarray(pixels, "RGBA")
    if kind == "palette cut-out":
        image = Image.fromarray(pixels[..., 0] // 255, "P")
        image.putpalette([0, 0, 255, 255, 0, 0])
        image.save(path, transparency=1)
        return str(path)
    image.save(path)
    return str(path)


@pytest.mark.parametrize("kind", ["cut-out", "palette cut-out", "16-bit grey", "phone photo"])
def test_an_image_prompt_is_read_as_it_looks(tmp_path, kind):
    import numpy as np

    from headsculpt_engine.guidance.image_prompt import read_image

    pixels = np.asarray(read_image(artists_image(tmp_path / "reference.png", kind)))
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    if kind == "phone photo":
        assert pixels.shape[:2] == (16, 8)  # upright, as a photo viewer shows it
        assert pixels[:8].mean(axis=(0, 1))[2] > 200 > pixels[8:].mean()  # the blue half on top
    elif kind == "16-bit grey":
        assert tuple(pixels[0, 0]) == (0, 0, 0) and tuple(pixels[-1, -1]) == (255, 255, 255)
        assert abs(pixels.mean() - 127.5) < 1.0  # Pillow's own conversion reads it as nearly all white
    else:
        assert (pixels[:, :4] == (0, 0, 255)).all()  # the character as it is
        assert (pixels[:, 4:] == 255).all()  # the transparency on white, not the red under it


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n broken"])
def test_an_unreadable_image_gets_a_sentence_and_nothing_is_written(tmp_path, content):
    bad = tmp_path / "face.png"
    bad.write_bytes(content)
    run_dir = tmp_path / "run"
    with pytest.raises(InputError, match="could not be read as an image"):
        pipeline.generate(tiny_run_config(image=str(bad)), builtin_prior(), run_dir, stages=("coarse",))
    assert not run_dir.exists()


@pytest.fixture(scope="module")
def styled_run(tmp_path_factory, tiny_lora):
    """A one-iteration coarse run with the tiny LoRA at 0.7 and an image prompt at 0.6."""
    folder = tmp_path_factory.mktemp("styled")
    cfg = tiny_run_config(image=write_image(folder / "ref.png", (90, 90, 200)), image_scale=0.6)
    cfg.models.loras, cfg.models.lora_scales = (tiny_lora,), (0.7,)
    pipeline.generate(cfg, builtin_prior(), folder / "run", stages=("coarse",))
    return folder / "run"


def test_the_run_record_names_each_lora_with_its_hash_and_the_image(styled_run, tiny_lora):
    record = json.loads((styled_run / "run.json").read_text())

    lora_file = tiny_models_dir() / TINY_LORA_DIR / LORA_WEIGHTS
    assert record["loras"] == [{"source": tiny_lora, "file": str(lora_file.resolve()), "scale": 0.7,
                                "sha256": hashlib.sha256(lora_file.read_bytes()).hexdigest()}]
    image = styled_run.parent / "ref.png"
    assert record["image_prompt"] == {"file": str(image.resolve()),
                                      "sha256": hashlib.sha256(image.read_bytes()).hexdigest()}


def test_an_edit_inherits_the_parents_lora_and_image_unless_given_its_own(styled_run, tmp_path):
    from headsculpt_engine.cli import build_parser
    from headsculpt_engine.commands.edit import edit_config

    record = json.loads((styled_run / "run.json").read_text())
    parser = build_parser()
    edit = ["edit", "--from", str(styled_run), "--instruction", "make him older"]
    cfg, inherited = edit_config(parser.parse_args(edit), record)
    lora_file = str((tiny_models_dir() / TINY_LORA_DIR / LORA_WEIGHTS).resolve())
    image = str((styled_run.parent / "ref.png").resolve())
    assert (cfg.models.loras, cfg.models.lora_scales) == ((lora_file,), (0.7,))
    assert (cfg.guidance.image, cfg.guidance.image_scale) == (image, 0.6)
    assert inherited == [f"LoRA {lora_file} at scale 0.7", f"image prompt {image} at scale 0.6"]

    own = write_image(tmp_path / "own.png", (10, 200, 10))
    cfg, inherited = edit_config(parser.parse_args([*edit, "--lora", "a/style", "--image", own]), record)
    assert (cfg.models.loras, cfg.models.lora_scales) == (("a/style",), (1.0,))
    assert (cfg.guidance.image, cfg.guidance.image_scale) == (str((tmp_path / "own.png").resolve()), 1.0)
    assert inherited == []
    # Each is inherited on its own: a LoRA of the user's own keeps the parent's image prompt.
    cfg, inherited = edit_config(parser.parse_args([*edit, "--lora", "a/style"]), record)
    assert cfg.models.loras == ("a/style",) and cfg.guidance.image == image
    assert inherited == [f"image prompt {image} at scale 0.6"]
    # --no-parent-styles leaves both out: the edit runs with no LoRA and no image prompt.
    cfg, inherited = edit_config(parser.parse_args([*edit, "--no-parent-styles"]), record)
    assert (cfg.models.loras, cfg.guidance.image, inherited) == ((), "", [])


@pytest.mark.parametrize("kind", ["LoRA", "image prompt"])
def test_an_edit_refuses_a_parents_style_file_that_changed_or_went(styled_run, tmp_path, kind):
    from headsculpt_engine.cli import build_parser
    from headsculpt_engine.commands.edit import edit_config

    record = json.loads((styled_run / "run.json").read_text())
    entry = record["loras"][0] if kind == "LoRA" else record["image_prompt"]
    copy = tmp_path / Path(entry["file"]).name  # the parent's file, where the user kept it
    copy.write_bytes(Path(entry["file"]).read_bytes())
    entry["file"] = str(copy)
    args = build_parser().parse_args(["edit", "--from", str(styled_run), "--instruction", "make him older"])
    edit_config(args, record)  # as it was: inherited
    copy.write_bytes(copy.read_bytes() + b" ")
    flag = "--lora" if kind == "LoRA" else "--image"
    with pytest.raises(InputError, match=rf"parent run's {kind} .* has changed since the avatar was made, so the "
                                         rf"edit would not keep its style; pass {flag} to choose it anew"):
        edit_config(args, record)
    copy.unlink()
    with pytest.raises(InputError, match=rf"parent run's {kind} .* is no longer there; pass {flag}"):
        edit_config(args, record)
    args = build_parser().parse_args(["edit", "--from", str(styled_run), "--instruction", "x", "--no-parent-styles"])
    assert edit_config(args, record)[1] == []  # the way out the sentence names


def test_each_lora_takes_the_scale_after_it_on_generate_and_edit():
    from headsculpt_engine.cli import build_parser
    from headsculpt_engine.commands.options import apply_style_options

    parser = build_parser()
    args = parser.parse_args(["generate", "--prompt", "a clown", "--lora", "a/style", "--lora-scale", "0.5",
                              "--lora", "b/other", "--image", "ref.png", "--image-scale", "0.3"])
    cfg = preset_config("tiny")
    apply_style_options(cfg, args)
    assert cfg.models.loras == ("a/style", "b/other") and cfg.models.lora_scales == (0.5, 1.0)
    assert cfg.guidance.image.endswith("ref.png") and cfg.guidance.image_scale == 0.3
    edit = parser.parse_args(["edit", "--from", "run", "--instruction", "older", "--lora", "c/x"])
    assert edit.loras == [["c/x", 1.0]]
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--prompt", "a clown", "--lora-scale", "0.5"])


def test_the_cli_prints_the_lora_sentence_without_a_traceback(tmp_path, capsys):
    from headsculpt_engine.cli import main

    out = tmp_path / "run"
    code = main(["generate", "--prompt", "a clown", "--preset", "tiny", "--offline", "--out", str(out),
                 "--lora", foreign_lora(tmp_path, "shapes")])
    err = capsys.readouterr().err
    assert code == 2 and "is for another architecture" in err and "Traceback" not in err
    assert not out.exists()


def test_download_models_knows_the_ip_adapter_files():
    from headsculpt_engine.models.download import choose_files, specs_from_names

    (spec,) = specs_from_names(["h94/IP-Adapter"])
    listing = {"models/ip-adapter_sd15.safetensors": 44, "models/ip-adapter-plus_sd15.safetensors": 98,
               "models/image_encoder/config.json": 1, "models/image_encoder/model.safetensors": 2500,
               "models/image_encoder/pytorch_model.bin": 2500, "sdxl_models/ip-adapter_sdxl.safetensors": 700}
    assert [path for path, _ in choose_files(spec.repo_id, spec.parts, listing)] == [
        "models/image_encoder/config.json", "models/image_encoder/model.safetensors",
        "models/ip-adapter_sd15.safetensors"]
