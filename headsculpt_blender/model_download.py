"""Download models: the local engine's `headsculpt download-models --progress json`, run from a worker
thread, its JSON lines turned into one status line for the preferences. The access token travels in the
child's environment (HF_TOKEN), never on its command line, in a log or in a file. No bpy here."""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from .background import Cancelled, ProcessRunner

LOG_FILE = "download.log"


@dataclass
class DownloadState:
    phase: str = "idle"  # idle | running | done | failed | cancelled
    file: str = ""
    done_bytes: int = 0
    total_bytes: int = 0
    message: str = ""

    @property
    def line(self) -> str:
        if self.phase != "running":
            return self.message
        if not self.total_bytes:
            return self.message or "Looking up the models' files"
        text = f"{self.done_bytes / 1e6:,.0f} of {self.total_bytes / 1e6:,.0f} MB"
        return f"Downloading {self.file}: {text}" if self.file else f"Downloading: {text}"

    @property
    def factor(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0


def download_command(launcher: list[str], models: str = "default") -> list[str]:
    return [*launcher, "download-models", "--models", models, "--progress", "json"]


class ModelDownload:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = DownloadState()
        self._thread: threading.Thread | None = None
        self._runner = ProcessRunner()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def snapshot(self) -> DownloadState:
        with self._lock:
            return replace(self._state)

    def start(self, command: list[str], log_dir: Path, token: str = "") -> None:
        if self.running:
            raise RuntimeError("The models are being downloaded already.")
        self._runner.reset()
        self._set(DownloadState(phase="running"))
        env = dict(os.environ)
        if token:
            env["HF_TOKEN"] = token
        self._thread = threading.Thread(target=self._run, args=(command, log_dir, env), daemon=True,
                                        name="headsculpt-download")
        self._thread.start()

    def cancel(self) -> None:
        self._runner.cancel()

    def wait(self, timeout: float | None = None) -> DownloadState:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    def _set(self, state: DownloadState) -> None:
        with self._lock:
            self._state = state

    def _run(self, command: list[str], log_dir: Path, env: dict[str, str]) -> None:
        final: dict = {}

        def on_line(line: str) -> None:
            try:
                event = json.loads(line)
            except ValueError:
                return  # not one of the command's JSON lines (they all are, unless Python itself fails)
            if not isinstance(event, dict):
                return
            with self._lock:
                kind, st = event.get("event"), self._state
                if kind == "plan":
                    st.total_bytes = int(event.get("to_download", 0))
                    if not st.total_bytes:
                        st.message = "Every model file is in the cache already"
                elif kind == "progress":
                    st.file = str(event.get("file", ""))
                    st.done_bytes = int(event.get("total_done", 0))
                    st.total_bytes = int(event.get("total", st.total_bytes))
                elif kind in ("done", "error"):
                    final.update(event)

        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(log_dir / LOG_FILE, "a", encoding="utf-8") as log:
                code, lines = self._runner.run(command, on_line, log, env=env)
        except Cancelled:
            self._finish("cancelled", "Download cancelled; press Download models to go on (the file it was on "
                                      "starts over).")
            return
        except OSError as error:
            self._finish("failed", f"The engine could not be started to download the models: {error}.")
            return
        if final.get("event") == "done" and code == 0:
            size = int(final.get("downloaded", 0)) / 1e9
            self._finish("done", f"Models ready ({size:.1f} GB downloaded now; the rest was in the cache)"
                         if size else "Models ready: every file is in the Hugging Face cache")
        else:
            reason = final.get("message") or (lines[-1].strip() if lines else "no output")
            self._finish("failed", f"Download models failed: {reason}")

    def _finish(self, phase: str, message: str) -> None:
        with self._lock:
            self._state.phase, self._state.message = phase, message


DOWNLOAD = ModelDownload()
