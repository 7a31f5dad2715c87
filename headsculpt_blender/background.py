"""A child process run from a worker thread, its output read line by line, and stoppable from the main
thread; one such job at a time, its state readable while it runs: what Set up engine and Download models
share. No bpy here."""
from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
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


class Worker:
    """One job at a time in a daemon thread: `_launch` starts the subclass's `_run`, `snapshot()` copies
    its state (a dataclass) out under the lock, `cancel()` stops its child process."""

    def __init__(self, state, thread_name: str) -> None:
        self._lock = threading.Lock()
        self._state = state
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None
        self._runner = ProcessRunner()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def snapshot(self):
        with self._lock:
            return replace(self._state)

    def cancel(self) -> None:
        self._runner.cancel()

    def wait(self, timeout: float | None = None):
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    def _launch(self, state, *args) -> None:
        """Start `self._run(*args)` from `state`; the caller has refused already when `running`."""
        self._runner.reset()
        with self._lock:
            self._state = state
        self._thread = threading.Thread(target=self._run, args=args, name=self._thread_name, daemon=True)
        self._thread.start()

    def _update(self, **changes) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self._state, name, value)
