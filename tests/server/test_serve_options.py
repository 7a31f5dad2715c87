"""`headsculpt serve` start-up rules: loopback unless --allow-remote, the token file, the handshake."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from headsculpt_engine.commands.serve import is_loopback, write_handshake
from headsculpt_engine.server.auth import ensure_token, read_token


@pytest.mark.parametrize("host, expected", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("192.168.1.20", False)])
def test_loopback_detection(host, expected):
    assert is_loopback(host) is expected


def test_a_reachable_address_needs_allow_remote(tmp_path):
    result = subprocess.run([sys.executable, "-m", "headsculpt_engine", "serve", "--host", "0.0.0.0",
                             "--data", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr
    assert not (tmp_path / "server.json").exists()


def test_token_is_created_once_with_owner_only_access(tmp_path):
    path = ensure_token(tmp_path)
    token = read_token(path)
    assert len(token) >= 40 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o644)
    assert ensure_token(tmp_path) == path and read_token(path) == token  # kept, permissions tightened
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    other = tmp_path / "other"
    other.mkdir()
    assert read_token(ensure_token(other)) != token  # random per data folder


def test_handshake_names_port_url_and_token_file(tmp_path):
    path = write_handshake(tmp_path, "::1", 8123, tmp_path / "token")
    info = json.loads(path.read_text())
    assert info["url"] == "http://[::1]:8123" and info["port"] == 8123 and info["pid"] == os.getpid()
    assert info["token_file"] == str(tmp_path / "token") and info["api_version"] == 1
