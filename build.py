#!/usr/bin/env python3
"""Task runner for HeadSculpt for Blender (standard library only).

    python build.py setup              create .venv (Python 3.11) and install the engine, tests and bpy
    python build.py test [PYTEST ARGS] set up when needed, then run the test suite
    python build.py build              build and validate dist/headsculpt-<version>.zip (the extension)
    python build.py generate [ARGS]    set up when needed, then run `headsculpt generate` (writes under out/)

The installs are skipped when nothing they depend on has changed since the last setup: a hash of the
dependency files is kept in .venv/.headsculpt-deps.
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
REQUIREMENTS = [TORCH_REQUIREMENT, "-e", f"{ENGINE}[test]", BPY_REQUIREMENT]


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


def dependency_hash() -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(REQUIREMENTS).encode())
    digest.update((ENGINE / "pyproject.toml").read_bytes())
    return digest.hexdigest()


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
    run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *REQUIREMENTS])
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
    return subprocess.run([str(python), "-m", "pytest", "tests", *args], cwd=ROOT, env=env).returncode


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


COMMANDS = {"setup": cmd_setup, "test": cmd_test, "build": cmd_build, "generate": cmd_generate}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
