"""The one rule for every file the API sends: a regular file inside its folder, reached without
following a symbolic link. A link planted in a job folder (say `result/avatar.json` pointing at
/etc/passwd) is treated as no file at all."""
from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath


def regular_file(folder: Path, relative: str) -> Path | None:
    """`folder/relative` when the folder and every step below it are real folders (no links) and the
    last step is a regular file; None otherwise (missing, a link, a device, `..`, absolute)."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or any(part in (".", "..") for part in parts):
        return None
    path = Path(folder)
    steps = [path] + [path := path / part for part in parts]
    for index, step in enumerate(steps):
        try:
            mode = os.lstat(step).st_mode
        except OSError:
            return None
        wanted = stat.S_ISREG if index == len(steps) - 1 else stat.S_ISDIR
        if not wanted(mode):  # S_ISLNK is neither
            return None
    return steps[-1]
