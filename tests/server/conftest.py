"""Fixtures for the server tests: a real engine server process with the tiny models."""
from __future__ import annotations

import pytest

from .engine_server import EngineServer


@pytest.fixture(scope="module")
def engine_server_env() -> dict[str, str]:
    """Environment variables the module's server gets besides the tests' own; a module overrides this
    fixture to give its server more (a model cache, say)."""
    return {}


@pytest.fixture(scope="module")
def engine_server(tmp_path_factory, engine_server_env):
    """One server per test module on a fresh data folder; stopped at the end whatever happens."""
    server = EngineServer(tmp_path_factory.mktemp("engine") / "data", env=engine_server_env)
    try:
        yield server.start()
    finally:
        server.stop()
