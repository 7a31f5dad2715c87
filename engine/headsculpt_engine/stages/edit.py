"""Editing (HeadSculpt Sec. 3.3): a new fine stage that starts from the parent run's avatar.

IESD (Eq. 7) and its ablation B5 need M_pi, the pre-edit avatar rendered from each step's cameras: the
stage keeps a frozen copy of the parent for that (`refine.FrozenAvatar`). Ablation B3 is the same stage
guided by plain SDS with the instruction-altered prompt. An SSD edit (HeadArtist) runs the SSD phases
from the parent: vertex offsets on its fixed SDF, then texture.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .refine import run_refine
from .ssd import run_ssd

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..guidance.base import Guidance
    from .fine import FineResult
    from .loop import RunCallbacks


def run_edit(cfg: "RunConfig", prior, guidance: "Guidance | None", parent_fine_dir: Path, run_dir: Path,
             callbacks: "RunCallbacks | None", device, reference: bool,
             colour=None) -> tuple["FineResult", dict[str, float]]:
    """Train (or resume) the edit in `run_dir`; `reference`: give the guidance M_pi (IESD, B5);
    `colour`: the colour field's module when it is not a `HeadField`, as in `run_fine`.
    Returns the edited avatar and the seconds each stage took."""
    if cfg.guidance.kind == "ssd":
        return run_ssd(cfg, prior, guidance, run_dir, callbacks, device, init_from=parent_fine_dir, colour=colour)
    result = run_refine(cfg, prior, guidance, Path(run_dir) / "fine", callbacks, device, init_from=parent_fine_dir,
                        name="edit", reference=reference, colour=colour)
    return result, {"edit": result.timings["seconds"]}
