"""Running a batch's variations here, one after another, through the same pipeline as `generate`."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import Cancelled, HeadSculptError
from .manifest import Entry, Manifest

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..prior import HeadPrior
    from ..stages.loop import Progress


def run_finished(run_dir: Path) -> bool:
    """A variation is done when its run says so and its avatar is there (a deleted result reruns the
    export, which loads the finished fine stage)."""
    try:
        status = json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return False
    return status == "done" and (run_dir / "result" / "avatar.glb").is_file()


def tag(manifest: Manifest, entry: Entry) -> str:
    return f"[{entry.index}/{len(manifest.entries)}]"


def run_local(manifest: Manifest, cfg: "RunConfig", prior: "HeadPrior",
              on_progress: Callable[["Progress"], None], should_cancel: Callable[[], bool]) -> None:
    """Run every variation not done yet (an interrupted one resumes from its checkpoints). A cancel
    request stops the batch after checkpointing the current run; a failure stops it too."""
    from .. import pipeline
    from ..stages.loop import RunCallbacks

    def progress(update: "Progress") -> None:
        if update.message == "resuming":
            print(f"    {update.stage} resumes at iteration {update.iteration}/{update.total}", flush=True)
        on_progress(update)

    manifest.save()
    for entry in manifest.entries:
        run_dir = manifest.folder / entry.run_folder
        if entry.state == "done" and run_finished(run_dir):
            print(f"{tag(manifest, entry)} already done: {entry.prompt}", flush=True)
            continue
        verb = "Resuming" if (run_dir / "run.json").exists() else "Generating"
        print(f"{tag(manifest, entry)} {verb} \"{entry.prompt}\" (seed {entry.seed}) in {run_dir}", flush=True)
        manifest.set_state(entry, "running")
        run_cfg = copy.deepcopy(cfg)
        run_cfg.prompt, run_cfg.seed = entry.prompt, entry.seed
        try:
            pipeline.generate(run_cfg, prior, run_dir, RunCallbacks(on_progress=progress, should_cancel=should_cancel))
        except Cancelled:
            manifest.set_state(entry, "interrupted", "Stopped on request; run the same batch command to resume.")
            raise
        except HeadSculptError as error:
            # A problem of this batch's settings or models would fail every variation the same way.
            manifest.set_state(entry, "failed", str(error))
            raise
        manifest.set_state(entry, "done")
