"""Issue 18 in Blender: the panel's style LoRA and image prompt reach the job request (the image, and a
LoRA given as a file, uploaded to the engine as the prior is), the preferences' LoRA stands in for an
empty panel field, and bad fields are refused with a sentence before anything is sent."""
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
    assert edit["kind"] == "edit" and edit["loras"] == body["loras"] and edit["parent_styles"] is True
    assert edit["image_id"] == image_id and edit["image_scale"] == pytest.approx(0.9)


def test_an_edit_can_leave_out_the_avatars_style(bpy, scene, styled):
    styled.lora, styled.lora_scale = "styles/cartoon-lora", 0.7
    with FakeEngine() as engine:
        use_engine(engine.url)
        generated_body(bpy, scene, engine)
        bpy.context.view_layer.objects.active = avatar = styled.result_object
        styled.lora, styled.edit_instruction, styled.edit_keeps_style = "", "make him older", False
        assert bpy.ops.headsculpt.edit() == {"FINISHED"}
        poll_until(scene, lambda: styled.result_object not in (None, avatar))
        edit = engine.jobs[styled.job_id]["body"]
    assert edit["parent_styles"] is False and edit.get("loras", []) == []


def test_the_preferences_lora_serves_when_the_panel_names_none(bpy, scene, styled):
    from headsculpt_blender.preferences import preferences

    preferences().lora, preferences().lora_scale = "styles/house-style", 0.4
    with FakeEngine() as engine:
        use_engine(engine.url)
        body = generated_body(bpy, scene, engine)
    assert body["loras"] == [{"id": "styles/house-style", "scale": pytest.approx(0.4)}]
    assert "image_id" not in body and "image_scale" not in body


def lora_file(tmp_path, name: str = "my-style.safetensors", data: bytes = b"safetensors bytes") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_a_lora_file_is_uploaded_once_for_all_variations_and_jobs_name_its_id(bpy, scene, styled, tmp_path):
    styled.lora, styled.lora_scale = lora_file(tmp_path), 0.6
    styled.prompt, styled.variations = "a {young|old} cartoon pirate", 2
    with FakeEngine() as engine:
        use_engine(engine.url)
        assert bpy.ops.headsculpt.generate() == {"FINISHED"}
        poll_until(scene, lambda: len(engine.jobs) == 2)
        (lora_id,) = engine.loras
        assert engine.loras[lora_id] == b"safetensors bytes"
        bodies = [job["body"] for job in engine.jobs.values()]
        assert [body["loras"] for body in bodies] == [[{"id": lora_id, "scale": pytest.approx(0.6)}]] * 2
        posts = [path for method, path in engine.requests if method == "POST"]
        assert posts.count("/v1/loras") == 1 and posts.index("/v1/loras") < posts.index("/v1/jobs")


def test_the_preferences_lora_file_is_uploaded_for_an_edit_too(bpy, scene, styled, tmp_path):
    from headsculpt_blender.preferences import preferences

    preferences().lora, preferences().lora_scale = lora_file(tmp_path, data=b"house style"), 0.3
    with FakeEngine() as engine:
        use_engine(engine.url)
        body = generated_body(bpy, scene, engine)
        (lora_id,) = engine.loras
        assert body["loras"] == [{"id": lora_id, "scale": pytest.approx(0.3)}]
        bpy.context.view_layer.objects.active = avatar = styled.result_object
        styled.edit_instruction = "make him older"
        assert bpy.ops.headsculpt.edit() == {"FINISHED"}
        poll_until(scene, lambda: styled.result_object not in (None, avatar))
        assert engine.jobs[styled.job_id]["body"]["loras"] == body["loras"]
        assert [path for _, path in engine.requests].count("/v1/loras") == 2  # once per submission


def test_a_lora_over_the_engines_stated_limit_is_refused_before_sending(tmp_path):
    from headsculpt_blender.client import EngineClient, EngineError

    big = tmp_path / "huge.safetensors"
    big.write_bytes(bytes(3 * 2**20))
    with FakeEngine(lora_limit=2**20) as engine:
        with pytest.raises(EngineError, match=r"huge.safetensors \(3 MB\) is larger than the engine's size limit "
                                              r"\(1 MB\); pick a smaller LoRA, or start the engine with a larger"):
            EngineClient(engine.url, engine.token).upload_lora(big)
    assert ("POST", "/v1/loras") not in engine.requests and engine.loras == {}


def test_a_lora_over_an_older_engines_limit_gets_a_sentence_not_a_lost_connection(tmp_path):
    """An engine whose health answer names no limit answers 413 without reading the body and closes:
    urllib sees a reset mid-upload."""
    from headsculpt_blender.client import EngineClient, EngineError

    big = tmp_path / "huge.safetensors"
    big.write_bytes(bytes(32 * 2**20))
    with FakeEngine(lora_limit=2**20, states_lora_limit=False) as engine:
        with pytest.raises(EngineError, match=r"huge.safetensors \(32 MB\) while it was being sent: it is likely over"):
            EngineClient(engine.url, engine.token).upload_lora(big)
    assert engine.loras == {}


@pytest.mark.parametrize("field, value, sentence", [
    ("lora", "/home/me/loras/cartoon.safetensors", "is neither a .safetensors file on this computer nor a"),
    ("lora", "cartoon", "is neither a .safetensors file on this computer nor a Hugging Face id"),
    ("lora", "{tmp}/cartoon.ckpt", "cartoon.ckpt is not a .safetensors file"),
    ("image_path", "/nowhere/reference.png", "does not exist: pick a PNG or JPEG file"),
])
def test_bad_style_fields_are_refused_before_anything_is_sent(bpy, scene, styled, tmp_path, field, value, sentence):
    if "{tmp}" in value:
        value = lora_file(tmp_path, "cartoon.ckpt")
    setattr(styled, field, value)
    with FakeEngine() as engine:
        use_engine(engine.url)
        with pytest.raises(RuntimeError):
            bpy.ops.headsculpt.generate()
        assert engine.requests == [] and engine.jobs == {}
    assert sentence in styled.last_error
