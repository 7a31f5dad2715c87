"""Issue 18 in Blender: the panel's style LoRA and image prompt reach the job request (the image uploaded
to the engine as the prior is), the preferences' LoRA stands in for an empty panel field, and bad
fields are refused with a sentence before anything is sent."""
from __future__ import annotations

import hashlib

import pytest
from fake_engine import FakeEngine, png_bytes
from helpers import poll_until, use_engine

pytestmark = pytest.mark.bpy


@pytest.fixture
def styled(bpy, scene):
    """The built-in head as prior, a prompt; the preferences' LoRA cleared again afterwards."""
    from headsculpt_blender.preferences import preferences

    assert bpy.ops.headsculpt.add_base_head() == {"FINISHED"}
    st = scene.headsculpt
    st.prompt, st.preset = "a cartoon pirate", "tiny"
    yield st
    preferences().lora, preferences().lora_scale = "", 1.0


def generated_body(bpy, scene, engine) -> dict:
    st = scene.headsculpt
    assert bpy.ops.headsculpt.generate() == {"FINISHED"}
    poll_until(scene, lambda: st.result_object is not None)
    return engine.jobs[st.job_id]["body"]


def test_lora_and_image_fields_reach_the_generate_and_edit_requests(bpy, scene, styled, tmp_path):
    image = tmp_path / "reference.png"
    image.write_bytes(png_bytes(48, (230, 120, 30)))
    styled.lora, styled.lora_scale = "styles/cartoon-lora", 0.7
    styled.image_path, styled.image_scale = str(image), 0.5
    with FakeEngine() as engine:
        use_engine(engine.url)
        body = generated_body(bpy, scene, engine)
        image_id = hashlib.sha256(image.read_bytes()).hexdigest()
        assert body["loras"] == [{"id": "styles/cartoon-lora", "scale": pytest.approx(0.7)}]
        assert body["image_id"] == image_id and body["image_scale"] == pytest.approx(0.5)
        assert engine.images[image_id] == image.read_bytes()
        # The upload comes before the job that names it.
        paths = [path for method, path in engine.requests if method == "POST"]
        assert paths.index("/v1/images") < paths.index("/v1/jobs")

        avatar = styled.result_object
        bpy.context.view_layer.objects.active = avatar
        styled.edit_instruction, styled.image_scale = "make him older", 0.9
        assert bpy.ops.headsculpt.edit() == {"FINISHED"}
        poll_until(scene, lambda: styled.result_object not in (None, avatar))
        edit = engine.jobs[styled.job_id]["body"]
    assert edit["kind"] == "edit" and edit["loras"] == body["loras"]
    assert edit["image_id"] == image_id and edit["image_scale"] == pytest.approx(0.9)


def test_the_preferences_lora_serves_when_the_panel_names_none(bpy, scene, styled):
    from headsculpt_blender.preferences import preferences

    preferences().lora, preferences().lora_scale = "styles/house-style", 0.4
    with FakeEngine() as engine:
        use_engine(engine.url)
        body = generated_body(bpy, scene, engine)
    assert body["loras"] == [{"id": "styles/house-style", "scale": pytest.approx(0.4)}]
    assert "image_id" not in body and "image_scale" not in body


@pytest.mark.parametrize("field, value, sentence", [
    ("lora", "/home/me/loras/cartoon.safetensors", "is not a Hugging Face id (owner/name)"),
    ("image_path", "/nowhere/reference.png", "does not exist: pick a PNG or JPEG file"),
])
def test_bad_style_fields_are_refused_before_anything_is_sent(bpy, scene, styled, field, value, sentence):
    setattr(styled, field, value)
    with FakeEngine() as engine:
        use_engine(engine.url)
        with pytest.raises(RuntimeError):
            bpy.ops.headsculpt.generate()
        assert engine.requests == [] and engine.jobs == {}
    assert sentence in styled.last_error
