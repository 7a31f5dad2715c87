"""Set up engine's plain parts: the PyTorch build per machine, the pinned set per platform, pip's progress,
the status line, the engine lookup order, and the refusals (online access off, no engine at all)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.bpy

# What pip 26 prints for an install with `--progress-bar raw` (trimmed from a real run).
PIP_OUTPUT = """\
Looking in indexes: https://pypi.org/simple
Collecting diffusers==0.42.1
  Downloading diffusers-0.42.1-py3-none-any.whl (4.1 MB)
Progress 0 of 4100000
Progress 2000000 of 4100000
Progress 4100000 of 4100000
Collecting numpy==1.26.4
  Downloading numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl (18.3 MB)
Progress 0 of 18300000
Progress 9000000 of 18300000
"""


@pytest.mark.parametrize("system, machine, nvidia, requirement, index, label", [
    ("Linux", "x86_64", True, "torch==2.13.0", "", "CUDA"),
    ("Linux", "x86_64", False, "torch==2.13.0+cpu", "https://download.pytorch.org/whl/cpu", "CPU"),
    ("Windows", "AMD64", True, "torch==2.13.0+cu130", "https://download.pytorch.org/whl/cu130", "CUDA"),
    ("Windows", "AMD64", False, "torch==2.13.0+cpu", "https://download.pytorch.org/whl/cpu", "CPU"),
    ("Darwin", "arm64", False, "torch==2.13.0", "", "Apple Silicon (MPS)"),
])
def test_the_torch_build_for_each_machine(addon, system, machine, nvidia, requirement, index, label):
    from headsculpt_blender.engine_setup import TorchBuild, choose_torch

    assert choose_torch(system, machine, nvidia) == TorchBuild(requirement, index, label)


def test_torch_version_and_pinned_sets_match_build_py(addon):
    import build  # the checkout's task runner (the addon fixture puts the checkout root on sys.path)
    from headsculpt_blender import engine_setup

    assert build.TORCH_REQUIREMENT == f"torch=={engine_setup.TORCH_VERSION}"
    for system, machine in (("Linux", "x86_64"), ("Darwin", "arm64"), ("Windows", "AMD64")):
        name = engine_setup.constraints_name(system, machine)
        assert name in build.LOCK_PLATFORMS and (build.CONSTRAINTS_DIR / name).is_file()
    assert engine_setup.constraints_name("Linux", "riscv64") == ""


def test_pinned_set_pins_every_engine_dependency_and_leaves_torch_out(addon):
    import tomllib

    import build

    pins = {}
    for line in (build.CONSTRAINTS_DIR / "py311-linux-x86_64.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower()] = version.split(";")[0].strip()
    project = tomllib.loads((build.ENGINE / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    names = {spec.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower() for spec in wanted}
    assert names - {"torch"} <= set(pins), names - set(pins)
    assert pins["numpy"].startswith("1.") and pins["mediapipe"] == "0.10.21" and "bpy" in pins
    assert "torch" not in pins and not any(name.startswith("nvidia-") for name in pins)


def test_pip_progress_reads_packages_and_bytes(addon):
    from headsculpt_blender.engine_setup import PipProgress

    progress = PipProgress()
    seen = []
    for line in PIP_OUTPUT.splitlines():
        progress.feed(line)
        seen.append((progress.package, progress.downloaded_bytes))
    assert seen[2] == ("diffusers", 0) and seen[5] == ("diffusers", 4_100_000)
    assert seen[-1] == ("numpy", 4_100_000 + 9_000_000)
    progress.feed("Installing collected packages: numpy, diffusers")
    assert progress.package == "unpacking 2 packages" and progress.downloaded_bytes == 13_100_000


def test_ready_line(addon):
    from headsculpt_blender.engine_setup import ready_line

    assert ready_line({"torch": "2.13.0", "device": "CPU"}) == "Engine ready: torch 2.13.0, CPU"
    assert ready_line({"torch": "2.13.0", "device": "CUDA", "gpu": "NVIDIA GeForce RTX 4090",
                       "memory_gb": 24}) == "Engine ready: torch 2.13.0, CUDA, NVIDIA GeForce RTX 4090 (24 GB)"


def test_engine_lookup_order(addon, tmp_path, monkeypatch):
    from headsculpt_blender import engine
    from headsculpt_blender.client import EngineError
    from headsculpt_blender.engine import EngineSettings, engine_launcher

    named, made = tmp_path / "named-python", tmp_path / "made-python"
    for path in (named, made):
        path.write_text("")
    checkout = engine.detect_engine_python(Path(engine.__file__).parent)
    assert checkout  # the tests run the add-on from a checkout with .venv
    both = EngineSettings(python=str(named), setup_python=str(made))
    assert engine_launcher(both) == [str(named), "-m", "headsculpt_engine"]
    assert engine_launcher(EngineSettings(setup_python=str(made))) == [str(made), "-m", "headsculpt_engine"]
    assert engine_launcher(EngineSettings()) == [checkout, "-m", "headsculpt_engine"]
    monkeypatch.setattr(engine, "detect_engine_python", lambda start: "")
    monkeypatch.setattr(engine.shutil, "which", lambda name: "/usr/local/bin/headsculpt")
    assert engine_launcher(EngineSettings()) == ["/usr/local/bin/headsculpt"]
    monkeypatch.setattr(engine.shutil, "which", lambda name: None)
    with pytest.raises(EngineError, match="press Set up engine"):
        engine_launcher(EngineSettings())
    with pytest.raises(EngineError, match="does not exist"):
        engine_launcher(EngineSettings(python=str(tmp_path / "missing")))


def test_a_setup_that_finished_is_found_and_one_that_did_not_is_not(addon, tmp_path):
    from headsculpt_blender import engine_setup

    env = tmp_path / "engine-env"
    python = engine_setup.env_python(env)
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert engine_setup.ready_python(env) == ""  # made, but its last step never wrote the ready file
    (env / engine_setup.READY_FILE).write_text('{"torch": "2.13.0", "device": "CPU"}')
    assert engine_setup.ready_python(env) == str(python)
    (env / engine_setup.READY_FILE).write_text("{half")
    assert engine_setup.ready_python(env) == ""


def test_setup_refuses_with_online_access_off_and_writes_nothing(bpy, scene):
    from headsculpt_blender import engine_setup, preferences

    system = bpy.context.preferences.system
    system.use_online_access = False
    assert bpy.app.online_access is False
    env = preferences.setup_env_dir()
    before = sorted(os.listdir(env.parent))
    with pytest.raises(RuntimeError, match="Allow Online Access"):
        bpy.ops.headsculpt.setup_engine()
    assert not engine_setup.SETUP.running and not env.exists()
    assert sorted(os.listdir(env.parent)) == before
    assert "Online access is off" in scene.headsculpt.last_error


def test_generate_without_any_engine_refuses_at_once_and_offers_setup(bpy, scene, monkeypatch):
    from headsculpt_blender import engine, preferences

    prefs = preferences.preferences()
    prefs.engine_mode, prefs.engine_python = "local", ""
    monkeypatch.setattr(engine, "detect_engine_python", lambda start: "")
    monkeypatch.setattr(engine.shutil, "which", lambda name: None)
    assert not preferences.local_engine_found(prefs)
    assert bpy.ops.headsculpt.add_base_head() == {"FINISHED"}
    scene.headsculpt.prompt = "a knight"
    with pytest.raises(RuntimeError, match="No engine is set up"):
        bpy.ops.headsculpt.generate()
    st = scene.headsculpt
    assert st.job_state == "" and st.status == "" and "press Set up engine" in st.last_error


def test_download_models_refuses_with_online_access_off_and_writes_nothing(bpy, scene):
    from headsculpt_blender import model_download, preferences

    bpy.context.preferences.system.use_online_access = False
    prefs = preferences.preferences()
    prefs.engine_mode, prefs.models = "local", "default"
    before = sorted(os.listdir(preferences.user_dir()))
    with pytest.raises(RuntimeError, match="Allow Online Access"):
        bpy.ops.headsculpt.download_models()
    assert not model_download.DOWNLOAD.running
    assert sorted(os.listdir(preferences.user_dir())) == before
    assert "the models are downloaded from the Hugging Face Hub" in scene.headsculpt.last_error


def test_download_progress_line(addon):
    from headsculpt_blender.model_download import DownloadState

    running = DownloadState(phase="running", file="unet/diffusion_pytorch_model.fp16.safetensors",
                            done_bytes=812_000_000, total_bytes=4_265_000_000)
    assert running.line == "Downloading unet/diffusion_pytorch_model.fp16.safetensors: 812 of 4,265 MB"
    assert running.factor == pytest.approx(812 / 4265)
    assert DownloadState(phase="running").line == "Looking up the models' files"
