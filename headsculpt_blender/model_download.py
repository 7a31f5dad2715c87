"""Download models: the local engine's `headsculpt download-models --progress json`, run from a worker
thread, its JSON lines turned into one status line for the preferences. The access token travels in the
child's environment (HF_TOKEN), never on its command line, in a log or in a file. No bpy here."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .background import Cancelled, Worker

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


class ModelDownload(Worker):
    """One download at a time, in a worker thread; cancellable; its state readable at any time."""

    def __init__(self) -> None:
        super().__init__(DownloadState(), "headsculpt-download")

    def start(self, command: list[str], log_dir: Path, token: str = "") -> None:
        if self.running:
            raise RuntimeError("The models are being downloaded already.")
        env = dict(os.environ)
        if token:
            env["HF_TOKEN"] = token
        self._launch(DownloadState(phase="running"), command, log_dir, env)

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
            self._update(phase="cancelled", message="Download cancelled; press Download models to go on (the file "
                                                    "it was on starts over).")
            return
        except OSError as error:
            self._update(phase="failed", message=f"The engine could not be started to download the models: {error}.")
            return
        if final.get("event") == "done" and code == 0:
            size = int(final.get("downloaded", 0)) / 1e9
            self._update(phase="done", message=f"Models ready ({size:.1f} GB downloaded now; the rest was in the cache)"
                         if size else "Models ready: every file is in the Hugging Face cache")
        else:
            reason = final.get("message") or (lines[-1].strip() if lines else "no output")
            self._update(phase="failed", message=f"Download models failed: {reason}")

DOWNLOAD = ModelDownload()
