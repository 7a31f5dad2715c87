"""The panel's Variations (issue 18, item 1): N prompts from the prompt's {a|b} alternatives, N jobs on
the engine, N named avatars side by side on the same prior; a prompt without alternatives varied by
seed; refusals; cancel stops every variation."""
from __future__ import annotations

import numpy as np
import pytest
from fake_engine import FakeEngine
from helpers import poll_until, use_engine
from test_addon_flow import import_flame, nearest_distance, refused, world_vertices

pytestmark = pytest.mark.bpy

PROMPT = "a {young|old} knight with {red|black} hair"


def avatars(bpy):
    from headsculpt_blender.properties import is_avatar

    return sorted((obj for obj in bpy.data.objects if is_avatar(obj)), key=lambda obj: obj.location.x)


def test_two_variations_import_two_named_avatars_side_by_side(bpy, scene, flame_template):
    from headsculpt_blender.properties import PROP_JOB, PROP_PROMPT
    from headsculpt_blender.variations import prompt_variations

    head = import_flame(bpy, flame_template)
    head.location = (0.3, -0.5, 0.1)
    st = scene.headsculpt
    st.prior, st.prompt, st.preset, st.seed, st.variations = head, PROMPT, "tiny", 4, 2
    with FakeEngine(steps=2) as engine:
        use_engine(engine.url)
        assert bpy.ops.headsculpt.generate() == {"FINISHED"}
        poll_until(scene, lambda: len(avatars(bpy)) == 2 and not st.variation_queue)
        bodies = [job["body"] for job in engine.jobs.values()]
    expected = prompt_variations(f"a head of {PROMPT}", 2, 4)
    assert [body["prompt"] for body in bodies] == [variation.prompt for variation in expected]
    assert len({body["prompt"] for body in bodies}) == 2 and all("{" not in body["prompt"] for body in bodies)
    assert len(engine.priors) == 1 and {body["prior_id"] for body in bodies} == set(engine.priors)
    first, second = avatars(bpy)
    # Each avatar is named by the alternatives its prompt took, and carries its own job and prompt.
    assert [first.name, second.name] == [variation.name for variation in expected]
    for avatar, body in zip((first, second), bodies):
        words = avatar.name.split(", ")
        assert len(words) == 2 and all(word in body["prompt"] for word in words)
        assert avatar[PROP_PROMPT] == body["prompt"]
    assert {first[PROP_JOB], second[PROP_JOB]} == set(engine.jobs)
    # The first sits exactly on the prior; the second one prior width further along world X.
    assert nearest_distance(world_vertices(first), world_vertices(head)).max() < 1e-5
    shift = world_vertices(second) - world_vertices(first)
    assert np.allclose(shift, [head.dimensions.x, 0.0, 0.0], atol=1e-5)
    assert st.last_error == "" and st.job_state == "done"


def test_a_prompt_without_alternatives_varies_by_seed(bpy, scene, flame_template):
    from headsculpt_blender.properties import PROP_SEED

    st = scene.headsculpt
    st.prior, st.prompt, st.preset, st.seed, st.variations = import_flame(bpy, flame_template), "a knight", "tiny", 5, 3
    with FakeEngine(steps=2) as engine:
        use_engine(engine.url)
        assert bpy.ops.headsculpt.generate() == {"FINISHED"}
        poll_until(scene, lambda: len(avatars(bpy)) == 3 and not st.variation_queue)
        bodies = [job["body"] for job in engine.jobs.values()]
    assert [body["seed"] for body in bodies] == [5, 6, 7]
    assert {body["prompt"] for body in bodies} == {"a head of a knight"}
    # Each avatar says which seed made it, in its name and in its custom properties.
    assert [(avatar.name, avatar[PROP_SEED]) for avatar in avatars(bpy)] == [("seed 5", 5), ("seed 6", 6), ("seed 7", 7)]
    assert st.last_error == "" and st.job_state == "done"


def test_variations_refusals_are_sentences(bpy, scene, flame_template):
    st = scene.headsculpt
    st.prior = import_flame(bpy, flame_template)
    with FakeEngine() as engine:
        use_engine(engine.url)
        st.prompt, st.variations = PROMPT, 5
        assert "make 4 different prompts" in refused(bpy.ops.headsculpt.generate)
        st.prompt, st.variations = "a {young} knight", 1
        assert "two or more different alternatives" in refused(bpy.ops.headsculpt.generate)
        assert engine.jobs == {}


def test_cancel_stops_every_variation(bpy, scene, flame_template):
    st = scene.headsculpt
    st.prior, st.prompt, st.variations = import_flame(bpy, flame_template), PROMPT, 3
    with FakeEngine(steps=100) as engine:
        use_engine(engine.url)
        assert bpy.ops.headsculpt.generate() == {"FINISHED"}
        poll_until(scene, lambda: st.job_state == "running")
        assert bpy.ops.headsculpt.cancel() == {"FINISHED"}
        poll_until(scene, lambda: st.job_state == "cancelled")
        assert [job["state"] for job in engine.jobs.values()] == ["cancelled"] * 3
    assert st.variation_queue == "" and avatars(bpy) == []
