"""The sidebar panel's drawing code, run headless against a layout stand-in that checks every call
against Blender's own UILayout API (function and keyword names, property and operator names)."""
from __future__ import annotations

import pytest
from helpers import poll_until, use_engine

pytestmark = pytest.mark.bpy


class CheckedLayout:
    """Records UILayout calls; refuses functions, keywords, properties or operators Blender lacks."""

    def __init__(self, bpy, calls: list):
        self._bpy, self.calls = bpy, calls
        self.enabled = self.alert = True
        self.scale_y = 1.0

    def __getattr__(self, name):
        functions = self._bpy.types.UILayout.bl_rna.functions
        assert name in functions, f"UILayout has no {name}()"
        parameters = {p.identifier for p in functions[name].parameters}

        def call(*args, **kwargs):
            unknown = set(kwargs) - parameters
            assert not unknown, f"UILayout.{name}() has no parameter(s) {unknown}"
            if name in ("prop", "prop_search"):
                data, prop = args[0], args[1]
                assert prop in data.bl_rna.properties, f"{type(data).__name__} has no property {prop}"
            if name == "operator":
                category, op = args[0].split(".")
                assert hasattr(getattr(self._bpy.ops, category), op) and \
                    getattr(getattr(self._bpy.ops, category), op).get_rna_type(), args[0]
            self.calls.append((name, args, kwargs))
            return CheckedLayout(self._bpy, self.calls)

        return call


def draw(bpy, panel_class) -> list:
    calls: list = []
    # bpy Panels cannot be constructed outside Blender's UI: call draw on a stand-in `self`.
    stand_in = type("PanelStandIn", (), {"layout": CheckedLayout(bpy, calls)})()
    panel_class.draw(stand_in, bpy.context)
    return calls


def texts(calls) -> list[str]:
    return [kwargs.get("text", "") for name, _, kwargs in calls if name in ("label", "progress")]


def test_main_panel_through_a_job(bpy, scene, flame_template):
    from fake_engine import FakeEngine
    from headsculpt_blender.panel import HEADSCULPT_PT_avatar, HEADSCULPT_PT_main

    st = scene.headsculpt
    assert "Pick a head mesh in the scene, or add the base head" in texts(draw(bpy, HEADSCULPT_PT_main))
    bpy.ops.wm.obj_import(filepath=str(flame_template))
    st.prior = bpy.context.selected_objects[0]
    calls = draw(bpy, HEADSCULPT_PT_main)
    assert "FLAME head (5023 vertices, 9976 faces)" in texts(calls)
    assert ("operator", ("headsculpt.generate",), {"icon": "SHADERFX"}) in calls
    assert not [c for c in calls if c[0] == "progress"]  # no job yet
    with FakeEngine(steps=3) as engine:
        use_engine(engine.url)
        st.prompt = "a knight"
        bpy.ops.headsculpt.generate()
        poll_until(scene, lambda: st.job_state == "running")
        running = [c for c in draw(bpy, HEADSCULPT_PT_main) if c[0] == "progress"]
        assert running and running[0][2]["text"].startswith("Coarse 1/3") and "left" in running[0][2]["text"]
        assert running[0][2]["factor"] == pytest.approx(1 / 3)
        poll_until(scene, lambda: st.result_object is not None)
    calls = draw(bpy, HEADSCULPT_PT_main)
    assert [c for c in calls if c[0] == "template_icon"]  # the latest preview is shown
    bpy.context.view_layer.objects.active = st.result_object
    assert HEADSCULPT_PT_avatar.poll(bpy.context)
    avatar_calls = draw(bpy, HEADSCULPT_PT_avatar)
    assert ("operator", ("headsculpt.edit",), {"icon": "GREASEPENCIL"}) in avatar_calls
    assert ("operator", ("headsculpt.make_animatable",), {"icon": "ARMATURE_DATA"}) in avatar_calls
    bpy.context.view_layer.objects.active = st.prior
    assert not HEADSCULPT_PT_avatar.poll(bpy.context)  # the Edit panel shows for avatars only


def test_errors_are_shown_in_plain_words(bpy, scene):
    from headsculpt_blender.panel import HEADSCULPT_PT_main

    scene.headsculpt.last_error = ("The engine at http://127.0.0.1:9 cannot be reached (Connection refused); "
                                   "start it, or check the engine settings in the add-on preferences.")
    labels = [(kwargs.get("text"), kwargs.get("icon")) for name, _, kwargs in draw(bpy, HEADSCULPT_PT_main)
              if name == "label"]
    first = [icon for _, icon in labels].index("ERROR")
    assert " ".join(text for text, _ in labels[first:]) == scene.headsculpt.last_error
