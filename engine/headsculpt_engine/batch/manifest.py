"""`batch.json`, the batch's manifest: what each variation is (prompt, attributes, seed, run folder) and
where it stands (state, server job). A rerun reads it back and goes on where the last one stopped."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .attributes import Variation

MANIFEST_NAME = "batch.json"
# What identifies a batch: a rerun with other values would mix two batches in one folder.
IDENTITY = ("template", "attributes", "seed", "server")


@dataclass
class Entry:
    """One variation of the batch and its run."""

    index: int
    prompt: str
    attributes: dict[str, str]
    seed: int
    run_folder: str  # folder name inside the batch folder (the key `headsculpt eval` reads too)
    state: str = "pending"
    message: str = ""
    job_id: str | None = None  # the server's job, with --server


@dataclass
class Manifest:
    folder: Path
    template: str
    attributes: dict[str, list[str]]
    seed: int
    server: str | None
    entries: list[Entry] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    def save(self) -> None:
        """Atomic: an interrupted write leaves the previous manifest."""
        data: dict[str, Any] = {"kind": "headsculpt-batch", "template": self.template,
                                "attributes": self.attributes, "seed": self.seed, "server": self.server,
                                "runs": [asdict(entry) for entry in self.entries]}
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.replace(self.path)

    def set_state(self, entry: Entry, state: str, message: str = "") -> None:
        entry.state, entry.message = state, message
        self.save()


def run_folder_name(index: int, variation: Variation) -> str:
    """`03-old-woman-curly-hair`: the number keeps the draw order, the values say what it is."""
    words = re.sub(r"[^a-z0-9]+", "-", " ".join(variation.attributes.values()).lower()).strip("-")
    return f"{index:02d}-{words[:60].rstrip('-') or 'variation'}"


def open_manifest(folder: Path, template: str, attributes: dict[str, list[str]], seed: int,
                  server: str | None, variations: list[Variation]) -> Manifest:
    """The manifest for these variations: the folder's own when it holds this batch (its states kept,
    variations a larger --count adds appended), a new one otherwise. Nothing is written here."""
    manifest = Manifest(Path(folder), template, attributes, seed, server)
    known: dict[int, Entry] = {}
    if manifest.path.exists():
        data, entries = _read(manifest.path)
        if any(data.get(key) != getattr(manifest, key) for key in IDENTITY):
            raise InputError(f"{folder} holds a batch of another prompt, attribute file, seed or server; rerun it "
                             "with the same ones to resume it, or choose another --out folder.")
        known = {entry.index: entry for entry in entries}
    for index, variation in enumerate(variations, start=1):
        entry = known.get(index)
        if entry is None or entry.prompt != variation.prompt:
            entry = Entry(index, variation.prompt, variation.attributes, seed, run_folder_name(index, variation))
        manifest.entries.append(entry)
    return manifest


def _read(path: Path) -> tuple[dict[str, Any], list[Entry]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("kind") != "headsculpt-batch" or not isinstance(data.get("runs"), list):
            raise ValueError
        return data, [Entry(**run) for run in data["runs"]]
    except (OSError, ValueError, AttributeError, TypeError):
        raise InputError(f"{path} is not a batch manifest this engine can read; choose another --out "
                         "folder.") from None
