"""A child process run from a worker thread, its output read line by line, and stoppable from the main
thread: what Set up engine and Download models share. No bpy here."""
from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import IO


class Cancelled(Exception):
    """The artist pressed Cancel while the command ran."""


class ProcessRunner:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._cancel = threading.Event()

    def reset(self) -> None:
        self._cancel.clear()

    def cancel(self) -> None:
        self._cancel.set()
        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled

    def run(self, command: Sequence[str], on_line: Callable[[str], None], log: IO[str] | None = None,
            env: dict[str, str] | None = None) -> tuple[int, list[str]]:
        """Run `command` (stdout and stderr together), calling `on_line` for each line; its exit code and
        lines. Raises Cancelled when cancelled before or while it runs."""
        self.check()
        if log is not None:
            log.write(f"\n$ {' '.join(command)}\n")
            log.flush()
        flags = {"creationflags": subprocess.CREATE_NO_WINDOW} if os.name == "nt" else {}
        process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
                                   env=dict(os.environ if env is None else env, PYTHONUNBUFFERED="1"), **flags)
        with self._lock:
            self._process = process
        lines: list[str] = []
        try:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if log is not None:
                    log.write(line)
                on_line(line)
            code = process.wait()
        finally:
            with self._lock:
                self._process = None
            if log is not None:
                log.flush()
        self.check()
        return code, lines
