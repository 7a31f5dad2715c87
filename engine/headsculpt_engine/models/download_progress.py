"""How a model download shows itself: a size table and tqdm bars in a terminal, or one JSON object a
line for a program (the Blender add-on reads `headsculpt download-models --progress json`)."""
from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

from .download import ModelPlan, PlannedFile


def human_size(size: float) -> str:
    """Decimal units, as the Hugging Face Hub shows file sizes."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def plan_lines(plans: list[ModelPlan], with_files: bool = False) -> list[str]:
    """The table printed before a download (and by --dry-run, with each file)."""
    width = max((len(p.spec.label) for p in plans), default=0)
    lines = ["Models (sizes from the Hugging Face Hub):"]
    for plan in plans:
        cached = f", {human_size(plan.size - plan.to_download)} already in the cache" if plan.to_download < plan.size else ""
        lines.append(f"  {plan.spec.label:<{width}}  {human_size(plan.size):>9}  ({len(plan.files)} files{cached})")
        if with_files:
            lines += [f"      {f.path}  {human_size(f.size)}{'  (in the cache)' if f.cached else ''}" for f in plan.files]
    total = sum(p.size for p in plans)
    to_download = sum(p.to_download for p in plans)
    lines.append(f"To download: {human_size(to_download)} of {human_size(total)}." if to_download
                 else "Everything is already in the cache: nothing to download.")
    return lines


class TerminalProgress:
    """The size table on stdout, then a total bar and a bar for the current file on stderr."""

    def __init__(self) -> None:
        self._total_bar: Any = None
        self._file_bar: Any = None
        self._finished = 0  # bytes of the files already done

    def start(self, plans: list[ModelPlan]) -> None:
        from tqdm import tqdm

        print("\n".join(plan_lines(plans)), flush=True)
        to_download = sum(p.to_download for p in plans)
        if to_download:
            self._total_bar = tqdm(total=to_download, desc="  total", unit="B", unit_scale=True, dynamic_ncols=True)

    def file_bytes(self, file: PlannedFile, done: int) -> None:
        from tqdm import tqdm

        if self._file_bar is None:
            self._file_bar = tqdm(total=file.size, desc=_short(file.path), unit="B", unit_scale=True,
                                  dynamic_ncols=True, leave=False)
        self._file_bar.n = done
        self._file_bar.refresh()
        self._total_bar.n = self._finished + done
        self._total_bar.refresh()

    def file_done(self, file: PlannedFile) -> None:
        if self._file_bar is not None:
            self._file_bar.close()
            self._file_bar = None
        self._finished += file.size
        self._total_bar.n = self._finished
        self._total_bar.refresh()

    def finish(self, downloaded: int) -> None:
        if self._total_bar is not None:
            self._total_bar.close()
        if downloaded:
            print(f"Downloaded {human_size(downloaded)} into the Hugging Face cache.", flush=True)


def _short(path: str, width: int = 40) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3):]


class JsonProgress:
    """One JSON object a line: "plan" (models, files, sizes), "progress" (file, bytes done, its size,
    and the totals), then "done"; `error` writes the final line of a failed download."""

    def __init__(self, stream: IO[str] | None = None, interval_s: float = 0.25) -> None:
        self.stream = stream or sys.stdout
        self.interval_s = interval_s
        self._total = 0
        self._finished = 0
        self._last = 0.0

    def _emit(self, **event: Any) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def start(self, plans: list[ModelPlan]) -> None:
        self._total = sum(p.to_download for p in plans)
        self._emit(event="plan", size=sum(p.size for p in plans), to_download=self._total, models=[
            {"id": p.spec.repo_id, "label": p.spec.label, "size": p.size, "to_download": p.to_download,
             "files": [{"path": f.path, "size": f.size, "cached": f.cached} for f in p.files]} for p in plans])

    def _progress(self, file: PlannedFile, done: int) -> None:
        self._emit(event="progress", model=file.repo_id, file=file.path, done=done, size=file.size,
                   total_done=self._finished + done, total=self._total)

    def file_bytes(self, file: PlannedFile, done: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:  # at most a few lines a second
            self._last = now
            self._progress(file, done)

    def file_done(self, file: PlannedFile) -> None:
        self._progress(file, file.size)
        self._finished += file.size

    def finish(self, downloaded: int) -> None:
        self._emit(event="done", downloaded=downloaded, total=self._total)

    def error(self, message: str) -> None:
        self._emit(event="error", message=message)
