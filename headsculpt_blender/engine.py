"""Where the engine is: a local `headsculpt serve` process this add-on starts and stops, or a remote URL.

`EngineSettings` is a plain snapshot of the preferences, taken on the main thread, so that worker
threads never read bpy data. `connect(settings)` (worker threads) returns a checked `EngineClient`.
"""
from __future__ import annotations

import atexit
import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .client import EngineClient, EngineError

STARTUP_TIMEOUT_S = 120.0  # the first start may build the tiny models or load large ones


@dataclass(frozen=True)
class EngineSettings:
    mode: str = "local"  # "local" | "remote"
    url: str = ""
    token: str = ""
    python: str = ""  # engine interpreter for local mode, from the preferences; "" = look for one
    setup_python: str = ""  # the engine that Set up engine made, when it finished ("" = none)
    data_dir: str = ""  # the local engine's data folder (jobs, priors, token)
    models: str = "tiny"  # "tiny" | "default" | a folder
    back_view_token_file: str = ""
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def venv_python(folder: Path) -> Path:
    return folder / ".venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def detect_engine_python(start: Path) -> str:
    """The project's `.venv` interpreter in `start` or a folder above it (a source checkout), or ""."""
    for folder in [start, *start.parents]:
        candidate = venv_python(folder)
        if candidate.is_file():
            return str(candidate)
    return ""


NO_ENGINE = ("No engine is set up on this computer yet: press Set up engine (in the HeadSculpt panel or the "
             "add-on preferences), or use a remote engine.")


def engine_launcher(settings: EngineSettings) -> list[str]:
    """How to run the engine, in lookup order: the interpreter named in the preferences, the engine that
    Set up engine made, a source checkout's `.venv` above the add-on (developers), `headsculpt` on PATH."""
    if settings.python:
        if not Path(settings.python).is_file():
            raise EngineError(f"The engine Python {settings.python} does not exist; fix it in the add-on "
                              "preferences or clear it to use the engine that Set up engine makes.")
        return [settings.python, "-m", "headsculpt_engine"]
    python = settings.setup_python or detect_engine_python(Path(__file__).resolve().parent)
    if python:
        return [python, "-m", "headsculpt_engine"]
    command = shutil.which("headsculpt")
    if command:
        return [command]
    raise EngineError(NO_ENGINE)


def parse_extra_args(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as error:
        raise EngineError(f"The extra engine options cannot be read ({error}); fix their quoting.") from None


class LocalEngine:
    """One `headsculpt serve` child process, started on demand and stopped on exit or unregister."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._log = None
        self._started_with: tuple | None = None

    def command(self, settings: EngineSettings) -> list[str]:
        command = engine_launcher(settings) + ["serve", "--host", "127.0.0.1", "--port", "0",
                                               "--data", settings.data_dir, "--models", settings.models or "tiny"]
        if settings.back_view_token_file:
            command += ["--back-view-token", settings.back_view_token_file]
        return command + list(settings.extra_args)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, settings: EngineSettings) -> None:
        """Start the process unless one with the same settings runs; returns at once."""
        with self._lock:
            key = tuple(self.command(settings))
            if self.running and self._started_with == key:
                return
            self._stop_locked()
            data = Path(settings.data_dir)
            data.mkdir(parents=True, exist_ok=True)
            (data / "server.json").unlink(missing_ok=True)  # a stale handshake from an earlier run
            self._log = open(data / "engine.log", "ab")
            flags = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {}
            self._process = subprocess.Popen(list(key), stdin=subprocess.DEVNULL, stdout=self._log,
                                             stderr=subprocess.STDOUT, **flags)
            self._started_with = key

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=10)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._started_with = None

    def wait_ready(self, settings: EngineSettings, timeout_s: float = STARTUP_TIMEOUT_S) -> EngineClient:
        """Wait (in a worker thread) for the handshake file, then return a client for it."""
        handshake = Path(settings.data_dir) / "server.json"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                raise EngineError(f"The local engine stopped while starting: {self.last_log_line(settings)}")
            if handshake.is_file():
                try:
                    info = json.loads(handshake.read_text())
                    if info.get("pid") == process.pid:  # not one left behind by a killed engine
                        return EngineClient(info["url"], Path(info["token_file"]).read_text().strip())
                except (OSError, ValueError, KeyError):
                    pass  # written but not complete yet
            time.sleep(0.2)
        raise EngineError(f"The local engine did not start within {timeout_s:.0f} s; see "
                          f"{Path(settings.data_dir) / 'engine.log'}.")

    @staticmethod
    def last_log_line(settings: EngineSettings) -> str:
        try:
            lines = (Path(settings.data_dir) / "engine.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1] if lines else "no output"


LOCAL = LocalEngine()
atexit.register(LOCAL.stop)  # Blender quitting does not always unregister add-ons first


def connect(settings: EngineSettings) -> EngineClient:
    """A client for the configured engine whose API version was checked (worker threads only)."""
    if settings.mode == "remote":
        if not settings.url:
            raise EngineError("Set the remote engine's URL in the add-on preferences.")
        client = EngineClient(settings.url, settings.token)
    else:
        LOCAL.start(settings)
        client = LOCAL.wait_ready(settings)
    client.health()
    return client

