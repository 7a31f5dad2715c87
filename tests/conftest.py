"""Shared test setup: the engine package from this checkout, paths to the shared fixtures."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "engine"
FIXTURES = ROOT.parent / "shared" / "fixtures"

# Tests import the engine from this checkout, whatever is installed in the environment.
sys.path.insert(0, str(ENGINE))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ENGINE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def shared_fixture(name: str) -> Path:
    """A mesh from ../shared/fixtures; skipped where that folder is absent (a user's clone)."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"shared fixture {path} is absent (only the project's CI has ../shared)")
    return path


@pytest.fixture(scope="session")
def flame_template() -> Path:
    """The FLAME neutral head (Y up, metres, face along +Z, open at the neck)."""
    return shared_fixture("flame_head_template.obj")


@pytest.fixture(scope="session")
def flame_smile() -> Path:
    """The same FLAME topology with a smiling expression (placed elsewhere than the template)."""
    return shared_fixture("flame_head_smile.obj")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never write to the user's cache; the session shares one so tiny models are built once."""
    os.environ["HEADSCULPT_CACHE_DIR"] = str(tmp_path_factory.mktemp("headsculpt-cache"))
    yield


_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    """With Blender's bpy module loaded, the interpreter can hang at exit after the summary is printed
    (bpy's and torch's atexit handlers and threads): end the process with pytest's own exit status
    once everything is reported, so that a finished run never stalls CI."""
    if "bpy" in sys.modules and _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
