#!/usr/bin/env python3
"""Task runner for HeadSculpt for Blender (standard library only).

    python build.py setup              create .venv (Python 3.11) and install the engine, tests and bpy
    python build.py test [PYTEST ARGS] set up when needed, then run the test suite
    python build.py build              build and validate dist/headsculpt-<version>.zip (the extension,
                                       with the engine wheel and the pinned dependency set inside)
    python build.py generate [ARGS]    set up when needed, then run `headsculpt generate` (writes under out/)
    python build.py lock               regenerate engine/constraints/ (the pinned dependency set) with uv

Every install uses the pinned dependency set of engine/constraints/ for this platform, so pip resolves
nothing and downloads each package once. The installs are skipped when nothing they depend on has changed
since the last setup: a hash of the dependency files is kept in .venv/.headsculpt-deps.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
ENGINE = ROOT / "engine"
DIST = ROOT / "dist"
STAMP = VENV / ".headsculpt-deps"
PYTHON_VERSION = (3, 11)

# torch is pinned here rather than in engine/pyproject.toml so that users with another CUDA build can
# keep theirs. On machines without CUDA the local CPU build of 2.13.0 is fine.
TORCH_REQUIREMENT = "torch==2.13.0"
# bpy is Blender as a Python module: only the extension's tests need it. 4.5 LTS is built for
# Python 3.11 and numpy 1.x, like mediapipe 0.10.21.
BPY_REQUIREMENT = "bpy>=4.2,<4.6"
# setuptools and wheel build the engine wheel that the extension zip carries (without build isolation).
BUILD_REQUIREMENTS = ["setuptools>=68", "wheel"]
REQUIREMENTS = [TORCH_REQUIREMENT, "-e", f"{ENGINE}[test,ray]", BPY_REQUIREMENT, *BUILD_REQUIREMENTS]

# The pinned dependency set, one file per platform, made by `python build.py lock` (uv pip compile).
# torch and its CUDA packages are left out: which build of torch a machine needs is chosen at install
# time (build.py pins TORCH_REQUIREMENT; the extension's Set up engine picks CUDA, CPU or macOS).
CONSTRAINTS_DIR = ENGINE / "constraints"
LOCK_PLATFORMS = {  # constraints file -> (uv's --python-platform, sys.platform, platform.machine() names)
    "py311-linux-x86_64.txt": ("x86_64-manylinux_2_28", "linux", ("x86_64", "amd64")),
    "py311-macos-arm64.txt": ("aarch64-apple-darwin", "darwin", ("arm64", "aarch64")),
    "py311-windows-x86_64.txt": ("x86_64-pc-windows-msvc", "win32", ("amd64", "x86_64")),
}
MACOS_DEPLOYMENT_TARGET = "14.0"  # torch 2.13's macOS wheels are built for macOS 14
UNPINNED = ("torch", "triton")  # and every nvidia-* and cuda-* package


def pinned_here(line: str) -> bool:
    """Whether a line of uv's output belongs in the constraints (not torch's build-specific packages)."""
    name = line.split("==")[0].split(";")[0].strip().lower()
    return bool(name) and name not in UNPINNED and not name.startswith(("nvidia-", "cuda-"))


def say(message: str) -> None:
    print(f"[build] {message}", flush=True)


def fail(message: str) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
    print(f"[build] error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def find_python311() -> str:
    """The interpreter that creates .venv: this one when it is 3.11, else python3.11 on PATH."""
    if sys.version_info[:2] == PYTHON_VERSION:
        return sys.executable
    for name in ("python3.11", "python3", "python"):
        found = shutil.which(name)
        if not found:
            continue
        probe = subprocess.run([found, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            return found
    fail("Python 3.11 is needed (Blender's bpy module and mediapipe 0.10.21 are built for it). "
         "Install it (e.g. `pyenv install 3.11`) and run this command again.")


def constraints_file() -> Path | None:
    """This platform's pinned dependency set, or None where the project has none."""
    import platform

    machine = platform.machine().lower()
    for name, (_, system, machines) in LOCK_PLATFORMS.items():
        if sys.platform == system and machine in machines:
            return CONSTRAINTS_DIR / name
    return None


def dependency_hash() -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(REQUIREMENTS).encode())
    digest.update((ENGINE / "pyproject.toml").read_bytes())
    constraints = constraints_file()
    if constraints is not None and constraints.is_file():
        digest.update(constraints.read_bytes())
    return digest.hexdigest()


def constraint_args() -> list[str]:
    constraints = constraints_file()
    if constraints is None or not constraints.is_file():
        say("no pinned dependency set for this platform: pip resolves the versions itself")
        return []
    return ["-c", str(constraints)]


def ensure_venv() -> Path:
    """Create .venv and install everything, unless the recorded dependency hash is current."""
    python = venv_python()
    wanted = dependency_hash()
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
        return python
    if not python.exists():
        say(f"creating {VENV.name} with Python {PYTHON_VERSION[0]}.{PYTHON_VERSION[1]}")
        subprocess.run([find_python311(), "-m", "venv", str(VENV)], check=True)
    say("installing the engine, its test tools and bpy (a few minutes the first time)")
    run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *constraint_args(), *REQUIREMENTS])
    STAMP.write_text(wanted + "\n")
    return python


def run(command: list[str], **kwargs) -> None:
    completed = subprocess.run(command, **kwargs)
    if completed.returncode != 0:
        fail(f"command failed with status {completed.returncode}: {' '.join(command)}")


def cmd_setup(_: list[str]) -> int:
    ensure_venv()
    say("ready: .venv is set up")
    return 0


def cmd_test(args: list[str]) -> int:
    python = ensure_venv()
    env = dict(os.environ, PYTHONPATH=str(ENGINE))
    return subprocess.run([str(python), "-m", "pytest", "tests", "--durations=15", *args], cwd=ROOT, env=env).returncode


def cmd_generate(args: list[str]) -> int:
    python = ensure_venv()
    # Runs from the repository root, so the run folder lands under out/ unless --out says otherwise.
    return subprocess.run([str(python), "-m", "headsculpt_engine", "generate", *args], cwd=ROOT).returncode


def extension_version() -> str:
    import tomllib  # Python 3.11+; the venv interpreter is 3.11

    with open(ROOT / "blender_manifest.toml", "rb") as handle:
        return tomllib.load(handle)["version"]


def blender_ext_tool(python: Path) -> list[str]:
    """Blender's own extension tool, shipped inside the bpy wheel."""
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util; print(importlib.util.find_spec('bpy').origin)"],
        capture_output=True, text=True)
    if probe.returncode != 0 or not probe.stdout.strip() or probe.stdout.strip() == "None":
        fail("bpy is not importable in .venv; run `python build.py setup`.")
    # The wheel's layout: site-packages/bpy/__init__.so beside bpy/<version>/scripts/addons_core/...
    package = Path(probe.stdout.strip()).parent
    matches = sorted(package.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not matches:
        fail("Blender's extension tool (blender_ext.py) was not found inside the bpy package.")
    return [str(python), str(matches[-1])]


# Files from outside headsculpt_blender/ that the extension ships, by their place in the package.
EXTENSION_ASSETS = {"assets/base_head.obj": ROOT / "flame_assets" / "base_head.obj"}
# Where the zip carries the engine for Set up engine (headsculpt_blender/engine_setup.py reads it there):
# the engine wheel and the pinned dependency sets.
ENGINE_PAYLOAD = "engine_dist"
# The built-in head inside the engine wheel (prior/builtin.py looks there first).
ENGINE_WHEEL_ASSETS = ("base_head.obj", "base_head_landmarks.npz")


def build_engine_wheel(python: Path, out_dir: Path) -> Path:
    """The engine as a wheel, with the built-in head packed into its package."""
    source = ROOT / "build" / "engine-source"
    if source.exists():
        shutil.rmtree(source)
    shutil.copytree(ENGINE, source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build"))
    assets = source / "headsculpt_engine" / "assets"
    assets.mkdir()
    for name in ENGINE_WHEEL_ASSETS:
        shutil.copy2(ROOT / "flame_assets" / name, assets / name)
    out_dir.mkdir(parents=True, exist_ok=True)
    say("building the engine wheel")
    run([str(python), "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
         str(out_dir), str(source)])
    wheels = sorted(out_dir.glob("headsculpt_engine-*.whl"))
    if len(wheels) != 1:
        fail(f"expected one engine wheel in {out_dir}, found {len(wheels)}")
    return wheels[0]


def build_extension(python: Path) -> Path:
    """Stage headsculpt_blender/ with the manifest and assets, build the zip, validate it."""
    tool = blender_ext_tool(python)
    staging = ROOT / "build" / "extension"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(ROOT / "headsculpt_blender", staging,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "blender_manifest.toml", staging / "blender_manifest.toml")
    for inside, source in EXTENSION_ASSETS.items():
        if not source.is_file():
            fail(f"{source.relative_to(ROOT)} is missing; generate it with flame_assets/make_base_head.py.")
        (staging / inside).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, staging / inside)
    payload = staging / ENGINE_PAYLOAD
    build_engine_wheel(python, payload)
    shutil.copytree(CONSTRAINTS_DIR, payload / "constraints")
    DIST.mkdir(exist_ok=True)
    output = DIST / f"headsculpt-{extension_version()}.zip"
    output.unlink(missing_ok=True)
    say(f"building {output.relative_to(ROOT)}")
    run(tool + ["build", "--source-dir", str(staging), "--output-filepath", str(output)])
    say("validating it with Blender's validator")
    run(tool + ["validate", str(output)])
    say(f"done: {output}")
    return output


def cmd_build(_: list[str]) -> int:
    build_extension(ensure_venv())
    return 0


def cmd_lock(_: list[str]) -> int:
    """Resolve the engine's dependencies (with its test tools, bpy and the build tools) once per platform."""
    python = ensure_venv()
    uv = python.parent / ("uv.exe" if os.name == "nt" else "uv")
    if not uv.is_file():
        fail("uv is not in .venv; run `python build.py setup` (it comes with the engine's test tools).")
    CONSTRAINTS_DIR.mkdir(exist_ok=True)
    inputs = build_dir() / "lock-inputs.txt"
    inputs.write_text("\n".join([TORCH_REQUIREMENT, BPY_REQUIREMENT, *BUILD_REQUIREMENTS, "pip"]) + "\n")
    for name, (uv_platform, _, _) in LOCK_PLATFORMS.items():
        say(f"resolving {name}")
        env = dict(os.environ, MACOSX_DEPLOYMENT_TARGET=MACOS_DEPLOYMENT_TARGET)
        resolved = subprocess.run(
            [str(uv), "pip", "compile", str(ENGINE / "pyproject.toml"), str(inputs), "--extra", "test",
             "--extra", "ray",
             "--python-version", f"{PYTHON_VERSION[0]}.{PYTHON_VERSION[1]}", "--python-platform", uv_platform,
             "--no-header", "--no-annotate", "--quiet"],
            capture_output=True, text=True, env=env)
        if resolved.returncode != 0:
            fail(f"uv could not resolve {name}:\n{resolved.stderr.strip()}")
        pins = [line for line in resolved.stdout.splitlines() if pinned_here(line)]
        header = [f"# The engine's pinned dependency set for Python {PYTHON_VERSION[0]}.{PYTHON_VERSION[1]}, "
                  f"{uv_platform}: `python build.py lock` writes it (uv pip compile).",
                  "# Used as pip constraints by build.py setup, CI and the extension's Set up engine. torch and "
                  "its CUDA packages are",
                  "# not pinned here: each machine gets the torch build it needs."]
        (CONSTRAINTS_DIR / name).write_text("\n".join(header + pins) + "\n")
    say(f"done: {CONSTRAINTS_DIR.relative_to(ROOT)}")
    return 0


def build_dir() -> Path:
    folder = ROOT / "build"
    folder.mkdir(exist_ok=True)
    return folder


COMMANDS = {"setup": cmd_setup, "test": cmd_test, "build": cmd_build, "generate": cmd_generate, "lock": cmd_lock}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
