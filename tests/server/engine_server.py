"""Test helper: a real `python -m headsculpt_engine serve` process on loopback, found through its
handshake file, always stopped afterwards."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

START_TIMEOUT_S = 120.0  # a slow, shared 2-core machine imports FastAPI and friends slowly


class EngineServer:
    def __init__(self, data_dir: Path, models: str = "tiny", extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, umask: int = -1):
        self.data_dir = Path(data_dir)
        self.env, self.umask = env or {}, umask
        self.args = [sys.executable, "-m", "headsculpt_engine", "serve", "--data", str(self.data_dir),
                     "--port", "0", "--models", models, *extra_args]
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.token = ""
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    def start(self) -> "EngineServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **self.env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env, umask=self.umask)
        log.close()
        handshake = self.data_dir / "server.json"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                info = json.loads(handshake.read_text())
            except (OSError, ValueError):
                info = {}
            # A handshake left by a killed server names another pid: wait for ours.
            if info.get("pid") == self.proc.pid:
                self.url = info["url"]
                self.token = Path(info["token_file"]).read_text().strip()
                self.handshake = info
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"no handshake from the server within {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, token: str | None = "", timeout: float = 60.0) -> httpx.Client:
        """A client with this server's token; `token=None` sends none, another string sends that."""
        token = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine loses power."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self, timeout_s: float = 120.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop in time; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def __enter__(self) -> "EngineServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for(client: httpx.Client, job_id: str, states: tuple[str, ...], timeout_s: float = 300.0,
             predicate=None) -> dict:
    """Poll a job until its state is one of `states` (and `predicate(job)` holds); bounded."""
    deadline = time.monotonic() + timeout_s
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job.get("state") in states and (predicate is None or predicate(job)):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {states} within {timeout_s} s; last seen: {job}")
