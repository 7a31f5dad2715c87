"""SSD's base model: HeadArtist's SD 2.1-base when cached and the base was left at its default."""
from headsculpt_engine.config import DEFAULT_BASE_MODEL, HEADARTIST_BASE_MODEL, ModelsConfig
from headsculpt_engine.guidance.ssd_models import in_hf_cache, ssd_models


def test_ssd_takes_sd21_base_with_the_root_controlnet_when_cached():
    models, note = ssd_models(ModelsConfig(), "ssd", cached=lambda repo, name: True)
    assert models.base == HEADARTIST_BASE_MODEL and models.face_controlnet_subfolder == "" and note is None


def test_otherwise_a_plain_note_and_sd15():
    seen = []
    models, note = ssd_models(ModelsConfig(), "ssd", cached=lambda repo, name: seen.append((repo, name)) or False)
    assert models == ModelsConfig() and models.base == DEFAULT_BASE_MODEL
    assert note.startswith("HeadArtist's SSD uses") and "Traceback" not in note and "models.ssd_base=" in note
    assert (HEADARTIST_BASE_MODEL, "model_index.json") in seen


def test_sds_a_chosen_base_or_an_empty_ssd_base_are_left_alone():
    always = lambda repo, name: True  # noqa: E731
    assert ssd_models(ModelsConfig(), "sds", cached=always) == (ModelsConfig(), None)
    chosen = ModelsConfig(base="tiny")
    assert ssd_models(chosen, "ssd", cached=always) == (chosen, None)
    off = ModelsConfig(ssd_base="")
    assert ssd_models(off, "ssd", cached=always) == (off, None)


def test_cache_lookup_needs_no_network():
    assert in_hf_cache("nobody-has/this-model-xyz", "model_index.json") is False
