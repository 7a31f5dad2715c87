"""Fixtures for the server tests: a real engine server process with the tiny models."""
from __future__ import annotations

import pytest

from .engine_server import EngineServer


@pytest.fixture(scope="module")
def engine_server(tmp_path_factory):
    """One server per test module on a fresh data folder; stopped at the end whatever happens."""
    server = EngineServer(tmp_path_factory.mktemp("engine") / "data")
    try:
        yield server.start()
    finally:
        server.stop()
