"""The finished runs `headsculpt eval` scores: what each is (prompt, edit parent, instruction) and where its
avatar is; a run that is not finished is refused with a sentence."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class FinishedRun:
    folder: Path
    kind: str  # "generate" | "edit"
    prompt: str
    parent: Path | None  # the parent run's folder, for edits
    instruction: str

    @property
    def result(self) -> Path:
        return self.folder / "result"

    @property
    def name(self) -> str:
        return self.folder.name


def read_run(folder: Path) -> FinishedRun:
    folder = Path(folder).expanduser().resolve()
    record_path = folder / "run.json"
    if not record_path.is_file():
        raise InputError(f"{folder} is not a run folder (it has no run.json): pass folders that "
                         "`headsculpt generate` or `headsculpt edit` wrote.")
    try:
        record = json.loads(record_path.read_text())
    except ValueError:
        raise InputError(f"{record_path} cannot be read; run its command again to rewrite it.") from None
    if record.get("status") != "done" or not (folder / "result" / "avatar.obj").is_file():
        raise InputError(f"The run in {folder} is not finished (status {record.get('status', 'unknown')}): run "
                         "its command again to finish it, then evaluate it.")
    parent = record.get("parent")
    return FinishedRun(folder=folder, kind=str(record.get("kind") or "generate"), prompt=str(record.get("prompt", "")),
                       parent=Path(parent).resolve() if parent else None,
                       instruction=str(record.get("instruction") or ""))


def expand_manifests(paths: list[Path]) -> list[Path]:
    """Run folders, with each `.json` argument read as a batch or dataset manifest: a JSON object whose
    `runs` list holds one entry per generation with its `run_folder` (relative to the manifest's folder,
    or absolute) and its `state`, as `headsculpt batch` writes it (batch.json); entries that are not
    done are refused like unfinished runs."""
    folders: list[Path] = []
    for path in paths:
        path = Path(path).expanduser()
        if path.suffix.lower() != ".json":
            folders.append(path)
            continue
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            entries = manifest["runs"]
            for entry in entries:
                folder = Path(entry["run_folder"])
                state = entry.get("state", "done")
                if state != "done":
                    raise InputError(f"{path} lists {folder} as {state}: finish the batch (run it again), then "
                                     "evaluate it.")
                folders.append(folder if folder.is_absolute() else path.parent / folder)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"{path} is not a readable manifest (a JSON object with a 'runs' list of entries "
                             f"with 'run_folder'): {error}.") from None
    return folders


def read_prompts(path: Path) -> list[str]:
    """Distractor prompts for R-Precision: one a line (blank lines and lines starting with # skipped)."""
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InputError(f"The prompts file {path} cannot be read ({error.strerror or error}).") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
