"""Per-stage additions to a guidance's inputs, so that one fine stage serves generation, SSD and editing.

The fine stage knows how to render and which cameras it drew; it does not know that an edit needs the
pre-edit avatar's render M_pi from those very cameras (IESD, HeadSculpt Eq. 7), nor that HeadArtist's
SSD runs in a geometry and a texture phase whose t range depends on the iteration (appendix D).
`StagedGuidance` wraps any guidance and fills those into each `GuidanceInputs` the stage hands it; the
stage tells it which iteration is running (`start_iteration`), so that schedules survive a resume.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

from .base import Guidance, GuidanceInputs, GuidanceOutput

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras

ReferenceRenderer = Callable[["Cameras"], "torch.Tensor"]  # cameras -> (B, 3, H, W) in [0, 1]


class StagedGuidance(Guidance):
    """`inner` with M_pi and the SSD phase filled in.

    `reference(cameras)` renders the frozen pre-edit avatar; it runs without gradients on exactly the
    cameras of the trained render, at their resolution. `ssd_phase` ("geometry" or "texture") is set on
    an SSD guidance (`guidance.factory.SsdPhases`) with the stage's iteration, and its t range replaces
    the one the stage passes (the texture phase steps t_max down at a given iteration).
    The stage calls `start_iteration(i)` before each step (see `stages.refine.RefineStage`).
    """

    def __init__(self, inner: Guidance, reference: ReferenceRenderer | None = None, ssd_phase: str | None = None):
        if ssd_phase is not None and not hasattr(inner, "set_phase"):
            raise ValueError("An SSD phase was given for a guidance that is not SSD.")
        self.inner = inner
        self.reference = reference
        self.ssd_phase = ssd_phase
        self.start_iteration(0)

    @property
    def generator(self) -> "torch.Generator | None":
        """The inner guidance's random generator, which the stage checkpoints for an exact resume."""
        return getattr(self.inner, "generator", None)

    def start_iteration(self, iteration: int) -> None:
        if self.ssd_phase is not None:
            self.inner.set_phase(self.ssd_phase, iteration)  # type: ignore[attr-defined]

    def __call__(self, inputs: GuidanceInputs) -> GuidanceOutput:
        import torch

        changes: dict[str, Any] = {}
        if self.reference is not None:
            with torch.no_grad():
                reference = self.reference(inputs.cameras)
            if reference.shape != inputs.images.shape:
                raise ValueError(f"The reference render has shape {tuple(reference.shape)}, the trained render "
                                 f"{tuple(inputs.images.shape)}: they must come from the same cameras.")
            changes["reference_images"] = reference.detach().to(inputs.images)
        if self.ssd_phase is not None:
            changes["t_range"] = self.inner.t_range()  # type: ignore[attr-defined]
        return self.inner(dataclasses.replace(inputs, **changes))
