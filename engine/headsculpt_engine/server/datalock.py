"""One server per data folder: an OS file lock on `DATA/server.lock`, held for the server's life.

Two servers on one folder would both resume the same interrupted job into the same run folder. The
lock is the operating system's (flock on POSIX, a byte-range lock on Windows), so it goes away with
the process however it ends, even under SIGKILL: a stale lock file never blocks a restart.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from ..errors import InputError

LOCK_FILE = "server.lock"


class DataFolderLock:
    """Holds the lock until `release` (or process exit); the file names the holder's PID."""

    def __init__(self, handle: IO[str]):
        self._handle = handle

    def release(self) -> None:
        self._handle.close()  # closing the descriptor drops the OS lock


def _try_lock(handle: IO[str]) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _holder_sentence(data_dir: Path, handshake_file: str) -> str:
    """Who holds the folder: the PID from the lock file, the URL from its handshake if written yet."""
    try:
        pid = int((data_dir / LOCK_FILE).read_text().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    url = ""
    try:
        info = json.loads((data_dir / handshake_file).read_text())
        if info.get("pid") == pid:
            url = str(info.get("url", ""))
    except (OSError, ValueError):
        pass
    who = f"PID {pid}" if pid else "another process"
    where = f" at {url}" if url else " (still starting)"
    return (f"Another engine server ({who}{where}) is already using the data folder {data_dir}; "
            "stop it first, or start this one with another --data folder.")


def lock_data_folder(data_dir: Path, handshake_file: str) -> DataFolderLock:
    """Take the folder's lock or raise InputError naming the server that holds it."""
    path = Path(data_dir) / LOCK_FILE
    # "a": never truncate before holding the lock, or the holder's PID would be lost.
    handle = open(path, "a+", encoding="utf-8")
    handle.seek(0)  # Windows locks a byte range from the current position
    if not _try_lock(handle):
        handle.close()
        raise InputError(_holder_sentence(Path(data_dir), handshake_file))
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return DataFolderLock(handle)
