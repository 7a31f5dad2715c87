"""Test helper: a local Ray cluster (`ray start --head --block`) in its own process group and temp
folder, with GPUs as a logical resource (each job asks for one), always stopped afterwards."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RayCluster:
    def __init__(self, gpus: int = 2):
        # Ray's socket paths must stay short (108 bytes): a short folder under /tmp, not pytest's.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="hsray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        ray = Path(sys.executable).with_name("ray")
        # Ray's dashboard is left out here only, to start faster; `serve --ray` never turns it off.
        self.args = [str(ray), "start", "--head", "--block", f"--port={self.port}", "--num-cpus=4",
                     f"--num-gpus={gpus}", f"--temp-dir={self.temp_dir}", "--include-dashboard=false",
                     "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
                     f"--metrics-export-port={free_port()}"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RayCluster":
        env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
        log = open(self.temp_dir / "ray-start.log", "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)  # its own group: stop() ends every process of it
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Ray head did not listen within {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        path = self.temp_dir / "ray-start.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the group (`ray start --block` then stops its processes), SIGKILL to what is left."""
        if self.proc is not None:
            for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait_s)
                except subprocess.TimeoutExpired:
                    pass
                time.sleep(1)
            self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)
