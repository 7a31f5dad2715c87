"""View-dependent prompts and the learned `<back-view>` token (HeadSculpt Sec. 3.2)."""
import pytest
import torch

from headsculpt_engine.cameras import orbit_cameras
from headsculpt_engine.config import ModelsConfig
from headsculpt_engine.errors import InputError
from headsculpt_engine.models.loading import load_diffusion_models
from headsculpt_engine.models.text import view_prompt
from headsculpt_engine.models.textual_inversion import save_embedding


def test_view_prompt_words():
    assert view_prompt("a head of a man", "front") == "a head of a man, front view"
    assert view_prompt("a head of a man", "side") == "a head of a man, side view"
    assert view_prompt("a head of a man", "back") == "a head of a man, back view"
    assert view_prompt("a head of a man", "back", "<back-view>") == "a head of a man, <back-view>"
    assert view_prompt("a head of a man", "front", "<back-view>") == "a head of a man, front view"


def test_prompts_follow_camera_views_without_token():
    models = load_diffusion_models(ModelsConfig(base="tiny"), "cpu")
    views = orbit_cameras([0.0, 90.0, 180.0, 270.0]).view_names()
    assert models.prompts.view_prompts("a man", views) == [
        "a man, front view", "a man, side view", "a man, back view", "a man, side view"]


def test_back_view_token_file_replaces_back_view_words(tmp_path):
    plain = load_diffusion_models(ModelsConfig(base="tiny"), "cpu")
    dim = plain.text_encoder.config.hidden_size
    vector = torch.randn(dim, generator=torch.Generator().manual_seed(5))
    token_file = tmp_path / "back_view.safetensors"
    save_embedding(token_file, "<back-view>", vector)  # as `headsculpt learn-token` writes it

    models = load_diffusion_models(ModelsConfig(base="tiny", back_view_token_file=str(token_file)), "cpu")
    token_id = models.tokenizer.convert_tokens_to_ids("<back-view>")
    assert token_id >= len(plain.tokenizer)  # a new token, not an existing word
    table = models.text_encoder.get_input_embeddings().weight
    assert torch.allclose(table[token_id], vector)
    assert models.tokenizer("a man, <back-view>").input_ids.count(token_id) == 1

    prompts = models.prompts.view_prompts("a man", ["front", "side", "back"])
    assert prompts == ["a man, front view", "a man, side view", "a man, <back-view>"]
    assert all("<back-view>" not in p for p in prompts[:2])
    # The token changes the embedding of back views only.
    emb = models.prompts.embed(prompts)
    emb_plain = plain.prompts.embed(plain.prompts.view_prompts("a man", ["front", "side", "back"]))
    assert torch.allclose(emb[:2], emb_plain[:2], atol=1e-6)
    assert not torch.allclose(emb[2], emb_plain[2], atol=1e-3)


def test_missing_token_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="learn-token"):
        load_diffusion_models(ModelsConfig(base="tiny", back_view_token_file=str(tmp_path / "none.bin")), "cpu")


def test_text_embeddings_are_cached_per_prompt(monkeypatch):
    models = load_diffusion_models(ModelsConfig(base="tiny"), "cpu")
    calls = []
    forward = models.text_encoder.forward
    monkeypatch.setattr(models.text_encoder, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    first = models.prompts.embed(["a man, front view", "a man, side view", "a man, front view"])
    again = models.prompts.embed(["a man, side view", "a man, front view"])
    assert len(calls) == 1  # one encoder call for the two distinct prompts, none for the repeat
    assert torch.equal(first[0], first[2]) and torch.equal(again[0], first[1])
    assert not torch.equal(first[0], first[1])
