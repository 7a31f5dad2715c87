"""Files the engine stores named by their sha256, in one folder of its data folder (image prompts,
uploaded LoRAs). A file is written to a staging file beside its final place, hashed as it goes, and
moved into place in one rename: a request never sees half a file, and the same bytes twice are one file.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .files import regular_file

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
STAGING_SUFFIX = ".part"


class StagedFile:
    """A file being written into a blob folder; its sha256 and size follow every write."""

    def __init__(self, root: Path):
        handle, name = tempfile.mkstemp(dir=root, suffix=STAGING_SUFFIX)
        self.path, self.size = Path(name), 0
        self._file, self._digest = os.fdopen(handle, "wb"), hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._digest.update(data)
        self.size += len(data)

    def close(self) -> str:
        """Finish writing; the file's sha256."""
        self._file.close()
        return self._digest.hexdigest()


class BlobFolder:
    """`root/<sha256><suffix>` files; nothing else in `root` is ever served."""

    def __init__(self, root: Path, suffix: str):
        self.root, self.suffix = Path(root), suffix

    def path(self, blob_id: str) -> Path | None:
        """The stored file of that sha256 (a regular file inside the folder), or None."""
        if not _SHA256.match(blob_id or ""):
            return None
        return regular_file(self.root, f"{blob_id}{self.suffix}")

    @contextmanager
    def staging(self) -> Iterator[StagedFile]:
        """A staging file in the folder, removed at the end unless `keep` moved it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        staged = StagedFile(self.root)
        try:
            yield staged
        finally:
            staged.close()
            staged.path.unlink(missing_ok=True)

    def keep(self, staged: StagedFile) -> str:
        """Move a finished staging file into place (unless those bytes are stored already: then they
        count as just used); its sha256."""
        blob_id = staged.close()
        if self.path(blob_id) is None:
            os.replace(staged.path, self.root / f"{blob_id}{self.suffix}")
        else:
            self.touch(blob_id)
        return blob_id

    def touch(self, blob_id: str) -> None:
        """Mark a stored file as used now: eviction takes the least recently used first."""
        path = self.path(blob_id)
        if path is not None:
            os.utime(path)

    def evict(self, max_bytes: int, keep: set[str]) -> list[str]:
        """Remove the least recently used files until the folder holds at most `max_bytes`, never one
        in `keep` (the newest upload, those queued or running jobs name); the ids removed."""
        stored = []
        for path in self.root.glob(f"*{self.suffix}"):
            blob_id = path.name[:-len(self.suffix)]
            if _SHA256.match(blob_id) and self.path(blob_id) is not None:
                stat = path.stat()
                stored.append((stat.st_mtime, blob_id, stat.st_size))
        total = sum(size for _, _, size in stored)
        removed = []
        for _, blob_id, size in sorted(stored):
            if total <= max_bytes:
                break
            if blob_id not in keep:
                (self.root / f"{blob_id}{self.suffix}").unlink(missing_ok=True)
                removed.append(blob_id)
                total -= size
        return removed

    def put(self, data: bytes) -> str:
        """Store `data`; its sha256."""
        with self.staging() as staged:
            staged.write(data)
            return self.keep(staged)

    def remove_leftovers(self) -> None:
        """Staging files an interrupted upload left (a crash, a kill); call only while no upload runs."""
        for leftover in self.root.glob(f"*{STAGING_SUFFIX}"):
            leftover.unlink(missing_ok=True)
