"""The coarse stage: a NeRF on the head prior distilled with the landmark ControlNet (HeadSculpt
Sec. 3.1-3.2, Table 2, appendix A.1).

`run_coarse` trains it through `run_stage` (progress, cancel, checkpoints, exact resume, previews)
and writes `coarse_mesh.obj`; `load_coarse` gives the trained field back to the fine stage.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any

import torch

from ..cameras import Cameras, preview_cameras, sample_cameras
from ..config import CoarseConfig, RunConfig
from ..devices import resolve_device
from ..errors import HeadSculptError, InputError
from ..guidance.base import Guidance, GuidanceInputs
from ..nerf.background import Background
from ..nerf.field import HeadField
from ..nerf.occupancy import OccupancyGrid
from ..nerf.render import RenderOutput, RenderSettings, render
from ..profiling import Profiler, profile, section
from .loop import CHECKPOINT_NAME, RunCallbacks, StageSchedule, load_checkpoint, run_stage
from .shading import PREVIEW_AMBIENT, draw_lights, draw_shading

MESH_NAME = "coarse_mesh.obj"


@dataclass
class CoarseModel:
    """The trainable parts of the coarse stage: field, background and occupancy grid."""

    cfg: CoarseConfig
    field: HeadField
    background: Background
    grid: OccupancyGrid

    @classmethod
    def create(cls, cfg: CoarseConfig, prior, device, backend: str | None = None,
               init_grid: bool = True) -> "CoarseModel":
        """A fresh model; its occupancy grid starts from the prior unless a checkpoint will replace it."""
        head = HeadField(cfg, prior, device=device, backend=backend)
        grid = OccupancyGrid(cfg.occupancy_grid_resolution, cfg.bound, cfg.density_threshold,
                             cfg.occupancy_decay).to(device)
        if init_grid:
            grid.init_from_prior(head.density, prior.signed_distance)
        return cls(cfg, head, Background(cfg.background).to(device), grid)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.field.parameters(), *self.background.parameters()]

    def render(self, cameras: Cameras, shading: str = "albedo", light_dirs: torch.Tensor | None = None,
               perturb: bool = False, regularisers: bool = False, gradient_shading: bool | None = None,
               generator: torch.Generator | None = None, ambient: float = PREVIEW_AMBIENT,
               background_colours: torch.Tensor | None = None) -> RenderOutput:
        """Render `cameras`; `regularisers` also computes the penalties whose lambdas are > 0;
        `background_colours` (B, 3) replace the background module (random solid backgrounds)."""
        c = self.cfg
        if gradient_shading is None:
            gradient_shading = c.shading_normals == "gradient" and shading in ("lambertian", "textureless", "normal")
        settings = RenderSettings(samples=c.samples_per_ray, bound=c.bound, ambient=ambient, shading=shading,
                                  perturb=perturb, entropy=regularisers and c.lambda_entropy > 0,
                                  orientation=regularisers and c.lambda_orientation > 0,
                                  normal_consistency=regularisers and c.lambda_normal_consistency > 0,
                                  gradient_shading=gradient_shading)
        return render(self.field, self.grid, self.background, cameras, settings, light_dirs, generator,
                      background_colours)

    def state_dict(self) -> dict[str, Any]:
        return {"backend": self.field.backend, "field": self.field.state_dict(),
                "background": self.background.state_dict(), "grid": self.grid.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["backend"] != self.field.backend:
            raise InputError(f"This coarse checkpoint was trained with the {state['backend']} hash grid, which "
                             f"cannot be loaded into the {self.field.backend} one; resume on a machine that has it.")
        self.field.load_state_dict(state["field"])
        self.background.load_state_dict(state["background"])
        self.grid.load_state_dict(state["grid"])

    @torch.no_grad()
    def density_volume(self, resolution: int, chunk: int = 1 << 18) -> torch.Tensor:
        """Density at the vertices of a resolution^3 lattice over the scene cube, indexed [x, y, z];
        points in empty occupancy cells are not evaluated (their density is below the threshold)."""
        device = self.grid.estimates.device
        axis = torch.linspace(-self.cfg.bound, self.cfg.bound, resolution, device=device)
        x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
        points = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
        sigma = torch.zeros(points.shape[0], device=device)
        for start in range(0, points.shape[0], chunk):
            part = points[start:start + chunk]
            keep = self.grid.occupied(part).nonzero().squeeze(1)
            if keep.numel():
                sigma[start + keep] = self.field.density(part[keep]).float()
        return sigma.view(resolution, resolution, resolution)

    def extract_mesh(self, resolution: int) -> tuple["np.ndarray", "np.ndarray"]:  # noqa: F821
        """Marching cubes of the density at the density threshold: vertices (normalised frame), faces."""
        from skimage.measure import marching_cubes

        volume = self.density_volume(resolution).cpu().numpy()
        level = self.cfg.density_threshold
        if not (volume.min() < level < volume.max()):
            raise HeadSculptError("The coarse NeRF has no surface at the density threshold, so no mesh can be "
                                  "extracted; lower coarse.density_threshold or retrain with another seed.")
        spacing = (2.0 * self.cfg.bound / (resolution - 1),) * 3
        vertices, faces, _, _ = marching_cubes(volume, level=level, spacing=spacing)
        return vertices - self.cfg.bound, faces


def entropy_lambda(c: CoarseConfig, iteration: int) -> float:
    """The entropy weight ramped up linearly over the first half of the run, as the authors' code."""
    return c.lambda_entropy * min(1.0, 2.0 * iteration / max(c.iterations, 1))


def coarse_parameter_groups(model: CoarseModel, c: CoarseConfig) -> list[dict[str, Any]]:
    """Adam groups as the authors' code (network_grid.get_params): the hash grid at grid_lr_scale * lr,
    the MLPs (field and background) at lr."""
    encoding = list(model.field.encoding.parameters())
    ids = {id(p) for p in encoding}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": encoding, "lr": c.lr * c.grid_lr_scale}, {"params": rest, "lr": c.lr}]


@dataclass
class CoarseResult:
    out_dir: Path
    checkpoint: Path
    mesh: Path
    previews: list[Path]
    timings: dict[str, float] = dataclass_field(default_factory=dict)


class CoarseStage:
    """One coarse-stage optimisation as a `TrainableStage`."""

    name = "coarse"

    def __init__(self, cfg: RunConfig, prior, guidance: Guidance, device):
        self.cfg = cfg
        self.c = cfg.coarse
        self.prior = prior
        self.guidance = guidance
        self.device = resolve_device(device)
        self.total_iterations = self.c.iterations
        # Every random draw of the stage comes from this CPU generator (its state is checkpointed).
        self.generator = torch.Generator().manual_seed(cfg.seed)
        with torch.random.fork_rng(devices=[]):  # seeded parameter initialisation, global RNG untouched
            torch.manual_seed(cfg.seed)
            self.model = CoarseModel.create(self.c, prior, self.device)
        self.optimizer = torch.optim.Adam(coarse_parameter_groups(self.model, self.c), betas=self.c.betas,
                                          eps=self.c.adam_eps, weight_decay=self.c.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.device.type == "cuda")
        self.last_samples_evaluated = 0

    # --- one step -----------------------------------------------------------------------------------

    def step(self, iteration: int) -> float:
        """One iteration; its phases are timed when a `profiling` profiler is active."""
        c = self.c
        if iteration > 0 and iteration % c.occupancy_update_every == 0:
            self.model.grid.update(self.model.field.density, self.generator)
        with section("render"):
            cameras = sample_cameras(self.cfg.camera, c.batch, c.resolution, c.resolution,
                                     generator=self.generator, device=self.device)
            draw = draw_shading(c, iteration, c.warmup_iterations, c.batch, self.generator)
            lights = draw_lights(cameras.positions(), self.generator)
            out = self.model.render(cameras, draw.shading, lights, perturb=True, regularisers=True,
                                    generator=self.generator, ambient=draw.ambient,
                                    background_colours=draw.background)
        self.last_samples_evaluated = out.samples_evaluated
        with section("guidance"):
            g = self.cfg.guidance.resolution
            landmarks = None if self.cfg.guidance.landmarks == "none" else \
                self.prior.landmark_maps(cameras.with_size(g, g), policy=self.cfg.guidance.back_views).to(self.device)
            # A normal warm-up as the authors' code does it: [normal map, opacity] is the latent itself.
            as_latent = draw.warmup and draw.shading == "normal" and c.warmup_as_latent
            images = torch.cat([out.image, out.opacity], dim=1) if as_latent else out.image
            guided = self.guidance(GuidanceInputs(images=images, cameras=cameras, as_latent=as_latent,
                                                  landmark_maps=landmarks))
            loss = guided.loss
            if c.lambda_entropy > 0:
                loss = loss + entropy_lambda(c, iteration) * out.entropy
            if c.lambda_orientation > 0:
                loss = loss + c.lambda_orientation * out.orientation
            if c.lambda_normal_consistency > 0:
                loss = loss + c.lambda_normal_consistency * out.normal_consistency
        with section("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        with section("optimizer_step"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return float(loss.detach())

    # --- state --------------------------------------------------------------------------------------

    def _guidance_generator(self) -> torch.Generator | None:
        generator = getattr(self.guidance, "generator", None)
        return generator if isinstance(generator, torch.Generator) else None

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "generator": self.generator.get_state()}
        guidance_generator = self._guidance_generator()
        if guidance_generator is not None:
            state["guidance_generator"] = guidance_generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"].cpu())
        guidance_generator = self._guidance_generator()
        if guidance_generator is not None and "guidance_generator" in state:
            guidance_generator.set_state(state["guidance_generator"].cpu())

    # --- previews -----------------------------------------------------------------------------------

    @torch.no_grad()
    def save_preview(self, iteration: int, directory: Path) -> Path:
        return save_preview(self.model, self.c.resolution, directory / f"coarse_{iteration:06d}.png")


def save_preview(model: CoarseModel, size: int, path: Path) -> Path:
    """Front, side and back views side by side in one PNG: albedo on top, and below them the shape
    (textureless, lit from the camera), which shows the geometry while the colours are still flat."""
    from PIL import Image

    cameras = preview_cameras(size, size, device=model.grid.estimates.device)
    lights = torch.nn.functional.normalize(cameras.positions().float(), dim=-1)
    with torch.no_grad():
        rows = [model.render(cameras, "albedo").image,
                model.render(cameras, "textureless", lights, gradient_shading=True).image]
    grid = torch.cat([torch.cat(list(row.clamp(0, 1)), dim=2) for row in rows], dim=1)  # (3, 2H, 3W)
    pixels = (grid.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(pixels).save(tmp)
    tmp.replace(path)
    return path


def write_mesh(model: CoarseModel, path: Path) -> Path:
    import trimesh

    vertices, faces = model.extract_mesh(model.cfg.mesh_resolution)
    tmp = path.with_suffix(".tmp.obj")
    trimesh.Trimesh(vertices=vertices, faces=faces, process=False).export(tmp, file_type="obj")
    tmp.replace(path)
    return path


def run_coarse(cfg: RunConfig, prior, guidance: Guidance, out_dir: Path, callbacks: RunCallbacks | None = None,
               device=None) -> CoarseResult:
    """Train (or resume) the coarse stage in `out_dir`; write its checkpoint, previews and mesh."""
    out_dir = Path(out_dir)
    stage = CoarseStage(cfg, prior, guidance, device)
    schedule = StageSchedule(checkpoint_every=cfg.coarse.checkpoint_every, preview_every=cfg.coarse.preview_every)
    profiler = Profiler(stage.device)
    with profile(profiler):
        timings = run_stage(stage, out_dir, callbacks, schedule, device=stage.device)
    began = time.perf_counter()
    mesh = write_mesh(stage.model, out_dir / MESH_NAME)
    timings["mesh_seconds"] = time.perf_counter() - began
    timings.update(profiler.per_iteration(int(timings["iterations"])))
    previews = sorted((out_dir / "previews").glob("*.png"))
    return CoarseResult(out_dir=out_dir, checkpoint=out_dir / CHECKPOINT_NAME, mesh=mesh, previews=previews,
                        timings=timings)


def load_coarse(out_dir: Path, cfg: RunConfig, prior, device=None) -> CoarseModel:
    """The trained coarse model of a finished (or interrupted) run, for the fine stage."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.exists():
        raise InputError(f"No coarse checkpoint at {path}; run the coarse stage first.")
    device = resolve_device(device)
    state = load_checkpoint(path, device)["stage"]["model"]
    model = CoarseModel.create(cfg.coarse, prior, device, backend=state["backend"], init_grid=False)
    model.load_state_dict(state)
    return model
