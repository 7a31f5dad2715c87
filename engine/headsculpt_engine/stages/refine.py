"""The fine stage, specialised by composition: HeadArtist's SSD phases and HeadSculpt's edits.

All of them are the DMTet fine stage (`stages.fine.FineStage`) with a few knobs turned:

- which parameters train ("sdf", "offsets", "colour"): SSD's geometry phase trains the shape, its
  texture phase only the colour, an SSD edit moves only the vertex offsets on the parent's fixed SDF.
  Frozen parameters get no gradient, so Adam leaves them bit-identical;
- a fixed shading: normal maps for SSD geometry (HeadArtist distils geometry from normal renders),
  albedo for texture phases (with the shape fixed, shaded renders would only dim the colour gradient);
- the starting point: another run's fine checkpoint (the parent of an edit, or the geometry phase);
- M_pi for IESD: a frozen copy of the starting avatar renders each step's cameras in albedo on white,
  as the authors' code renders its frozen copy (`copy_model.run_dmtet(..., shading="albedo")` when
  editing from the fine stage, their `--fine_edit`), and `StagedGuidance` hands it to the guidance.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

from ..guidance.staged import StagedGuidance
from ..profiling import section
from .fine import FineResult, FineStage, build_fine_stage
from .shading import ShadingDraw
from .loop import CHECKPOINT_NAME, RunCallbacks, StageSchedule, load_checkpoint, run_stage

if TYPE_CHECKING:
    from ..cameras import Cameras
    from ..config import RunConfig
    from ..guidance.base import Guidance

PARAMETER_GROUPS = ("sdf", "offsets", "colour")


class FrozenAvatar:
    """A finished avatar that only renders: its mesh extracted once, its colour field a frozen copy."""

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor, colour: torch.nn.Module, rasterizer):
        self.vertices = vertices
        self.faces = faces
        self.colour = colour
        self.rasterizer = rasterizer

    @classmethod
    def from_stage(cls, stage: FineStage) -> "FrozenAvatar":
        with torch.no_grad():
            vertices, faces = stage.geometry.extract()
        # The prior (which a HeadField keeps for its density) is read-only and large: share it.
        colour = copy.deepcopy(stage.colour, {id(stage.prior): stage.prior}).requires_grad_(False).eval()
        return cls(vertices.detach(), faces.detach(), colour, stage.rasterizer)

    def render(self, cameras: "Cameras") -> torch.Tensor:
        """Albedo renders on white."""
        from ..mesh.render import render_mesh

        with torch.no_grad(), section("render"):
            images, _ = render_mesh(self.rasterizer, self.vertices, self.faces, cameras, self.colour.albedo)
        return images


class RefineStage(FineStage):
    """`FineStage` with the knobs of the module docstring; checkpoints as the fine stage does."""

    def __init__(self, cfg: "RunConfig", prior, guidance: "Guidance | None", colour, geometry, device, *,
                 name: str = "fine", train: Iterable[str] = PARAMETER_GROUPS, shading: str | None = None,
                 reference: bool = False, ssd_phase: str | None = None):
        train = frozenset(train)
        if not train or not train <= set(PARAMETER_GROUPS):
            raise ValueError(f"train must name some of {', '.join(PARAMETER_GROUPS)}, not {sorted(train)}.")
        if guidance is not None and (reference or ssd_phase):
            guidance = StagedGuidance(guidance, reference=self.reference_images if reference else None,
                                      ssd_phase=ssd_phase)
        super().__init__(cfg, prior, guidance, colour, geometry, device)
        self.name = name
        self.train = train
        self.fixed_shading = shading
        self.reference: FrozenAvatar | None = None  # set by `run_refine` once the start is loaded
        self._last_cameras: Any = None
        self._freeze()

    def _freeze(self) -> None:
        self.geometry.sdf.requires_grad_("sdf" in self.train)
        self.geometry.deform.requires_grad_("offsets" in self.train)
        self.colour.requires_grad_("colour" in self.train)

    def _draw(self, iteration: int) -> ShadingDraw:
        if self.fixed_shading is None:
            return super()._draw(iteration)
        return ShadingDraw(self.fixed_shading, 1.0, False, None)

    def render(self, cameras, *args, **kwargs):
        self._last_cameras = cameras
        return super().render(cameras, *args, **kwargs)

    def reference_images(self, cameras: "Cameras") -> torch.Tensor:
        """M_pi: the starting avatar in albedo from the cameras (and at the size) of this step's
        trained render."""
        if self.reference is None or self._last_cameras is None:
            raise RuntimeError("The reference avatar is rendered only after the trained render of a step.")
        if cameras is not self._last_cameras:
            raise RuntimeError("M_pi must come from the cameras of the trained render.")
        return self.reference.render(cameras)

    def step(self, iteration: int) -> float:
        if isinstance(self.guidance, StagedGuidance):
            self.guidance.start_iteration(iteration)
        return super().step(iteration)

    def load_parameters(self, state: dict[str, Any]) -> None:
        """Start from another stage's parameters (geometry and colour), with fresh optimisers."""
        self.load_state_dict({**self.state_dict(), "geometry": state["geometry"], "colour": state["colour"]})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._freeze()  # a resized geometry comes back with fresh, trainable parameters


def run_refine(cfg: "RunConfig", prior, guidance: "Guidance | None", out_dir: Path,
               callbacks: RunCallbacks | None = None, device="cpu", *, init_from: Path | None = None,
               name: str = "fine", train: Iterable[str] = PARAMETER_GROUPS, shading: str | None = None,
               reference: bool = False, ssd_phase: str | None = None, colour=None) -> FineResult:
    """Train (or resume, or load when finished) a `RefineStage` in `out_dir`, starting from the fine
    checkpoint in `init_from` (a stage folder), else as the fine stage starts (from the prior).
    `colour` replaces the colour field's module, as in `run_fine`."""
    device = torch.device(device)
    stage = build_fine_stage(cfg, prior, guidance, device, colour=colour, stage_class=RefineStage, name=name,
                             train=train, shading=shading, reference=reference, ssd_phase=ssd_phase)
    if init_from is not None:
        stage.load_parameters(load_checkpoint(Path(init_from) / CHECKPOINT_NAME, device)["stage"])
    if reference:
        stage.reference = FrozenAvatar.from_stage(stage)
    timings = run_stage(stage, Path(out_dir), callbacks,
                        StageSchedule(cfg.fine.checkpoint_every, cfg.fine.preview_every), device)
    vertices, faces = stage.mesh()
    return FineResult(vertices=vertices, faces=faces, colour=stage.colour, timings=timings)
