"""Fine stage (HeadSculpt Sec. 3.1 (2)): DMTet refinement of the coarse head with a textured mesh.

Per-vertex SDF values s_i and bounded offsets dv_i on a tetrahedral grid are optimised directly
(Adam, lr 1e-2, appendix A.1); marching tetrahedra extracts a mesh each step, the rasteriser renders
it at 512x512 with the colour field of the coarse stage (Magic3D), and the guidance (t in [0.02, 0.5])
plus a uniform Laplacian regulariser drive both. The SDF starts from the coarse density (surface at
`FineConfig.density_threshold`) or, without a coarse run, from the prior's signed distance.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import InputError
from ..profiling import section
from .loop import RunCallbacks, StageSchedule, run_stage
from .shading import PREVIEW_AMBIENT, ShadingDraw, draw_lights, draw_shading

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..guidance.base import Guidance
    from ..mesh.tets import TetGrid

STAGE_NAME = "fine"
_EVAL_CHUNK = 1 << 16


@dataclass
class FineResult:
    """The refined mesh in the engine's normalised frame and the colour field that textures it."""

    vertices: torch.Tensor  # (V, 3) float32, cpu
    faces: torch.Tensor  # (F, 3) int64, cpu, counter-clockwise from outside
    colour: Any  # a module with `albedo(points (N, 3)) -> (N, 3)` in [0, 1]
    timings: dict[str, float] = field(default_factory=dict)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """Colour at points (N, 3) of the normalised frame, evaluated in chunks without gradients."""
        device = next(self.colour.parameters()).device
        with torch.no_grad():
            parts = [self.colour.albedo(points[i:i + _EVAL_CHUNK].to(device)).float().cpu()
                     for i in range(0, points.shape[0], _EVAL_CHUNK)]
        return torch.cat(parts) if parts else points.new_zeros((0, 3))


def laplacian_loss(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """The authors' mesh Laplacian (nerf/renderer.py laplacian_smooth_loss): mean_i ||(L v)_i|| with
    the uniform graph Laplacian L = D - A, (L v)_i = deg_i v_i - sum of its edge neighbours; not
    squared, so its pull does not fade as the surface smooths out."""
    faces = faces.long()
    src = torch.cat([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    dst = torch.cat([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    # Each undirected edge appears in two faces of a closed mesh: count it once.
    n = vertices.shape[0]
    keys = torch.unique(src * n + dst)
    src, dst = keys // n, keys % n
    total = torch.zeros_like(vertices).index_add(0, src, vertices[dst])
    degree = torch.bincount(src, minlength=n).unsqueeze(-1).to(vertices)
    lap = degree * vertices - total
    # sqrt at 0 has an infinite derivative: a vertex exactly at its neighbours' mean gets gradient 0.
    return torch.sqrt(lap.pow(2).sum(-1).clamp_min(1e-24)).mean()


def normal_consistency_loss(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean over edges shared by two faces of 1 - n0 . n1 (unit face normals): 0 on a flat surface,
    growing with the fold between neighbouring faces (the authors' and threestudio's definition)."""
    faces = faces.long()
    v = vertices[faces]
    normals = torch.nn.functional.normalize(torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1)
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    owner = torch.arange(faces.shape[0], device=faces.device).repeat(3)
    _, inverse, counts = torch.unique(edges, dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    shared = counts[inverse[order]] == 2  # edges at an open border have one face: skipped
    pairs = owner[order][shared].view(-1, 2)
    if pairs.numel() == 0:
        return vertices.sum() * 0.0
    cosine = (normals[pairs[:, 0]] * normals[pairs[:, 1]]).sum(-1).clamp(-1.0, 1.0)
    return (1.0 - cosine).mean()


class DMTetGeometry(torch.nn.Module):
    """SDF values and offsets on a tet grid; `extract()` gives the current triangle mesh."""

    def __init__(self, grid: "TetGrid", sdf: torch.Tensor, max_offset_cells: float):
        super().__init__()
        self.register_buffer("base", grid.vertices.float().clone())
        self.register_buffer("tets", grid.tets.long().clone())
        # A buffer, so that a loaded state (an edit's parent, whose grid was fitted to another extent)
        # brings back the scale its offsets were trained with.
        self.register_buffer("offset_scale", torch.tensor(float(max_offset_cells) * grid.cell_size))
        self.sdf = torch.nn.Parameter(sdf.float().clone())
        self.deform = torch.nn.Parameter(torch.zeros_like(self.base))

    def positions(self) -> torch.Tensor:
        """Grid vertices moved by dv = max_offset * cell * tanh(deform)."""
        return self.base + self.offset_scale * torch.tanh(self.deform)

    def extract(self) -> tuple[torch.Tensor, torch.Tensor]:
        from ..mesh.marching import marching_tets

        return marching_tets(self.positions(), self.sdf, self.tets)

    def resize_like(self, state: dict[str, torch.Tensor]) -> None:
        """Match tensor shapes to a saved state (its band may differ from this run's initial one)."""
        self.base = state["base"].clone()
        self.tets = state["tets"].clone()
        self.offset_scale = state["offset_scale"].clone()
        self.sdf = torch.nn.Parameter(state["sdf"].clone())
        self.deform = torch.nn.Parameter(state["deform"].clone())


class FineStage:
    """One DMTet optimisation step per iteration; see the module docstring."""

    name = STAGE_NAME

    def __init__(self, cfg: "RunConfig", prior, guidance: "Guidance | None", colour, geometry: DMTetGeometry,
                 device):
        from ..mesh.raster import make_rasterizer

        self.cfg = cfg
        self.prior = prior
        self.guidance = guidance
        self.colour = colour
        self.geometry = geometry
        self.device = torch.device(device)
        self.total_iterations = cfg.fine.iterations
        self.rasterizer = make_rasterizer(self.device, cfg.fine.rasterizer)
        self.generator = torch.Generator().manual_seed(int(cfg.seed) * 7919 + 17)
        self._make_optimisers()

    def _make_optimisers(self) -> None:
        betas, eps = tuple(self.cfg.coarse.betas), self.cfg.coarse.adam_eps
        self.geometry_opt = torch.optim.Adam([self.geometry.sdf, self.geometry.deform], lr=self.cfg.fine.lr,
                                             betas=betas, eps=eps)
        self.colour_opt = torch.optim.Adam(self.colour.parameters(), lr=self.cfg.fine.color_lr, betas=betas,
                                           eps=eps)

    # --- rendering -----------------------------------------------------------------------------

    def _draw(self, iteration: int) -> ShadingDraw:
        """The shared schedule (stages/shading.py) with the fine stage's warm-up length."""
        return draw_shading(self.cfg.coarse, iteration, self.cfg.fine.warmup_iterations, self.cfg.fine.batch,
                            self.generator)

    def render(self, cameras, shading: str = "albedo", light_dirs=None, ambient: float = PREVIEW_AMBIENT,
               background: "float | torch.Tensor" = 1.0):
        """Renders of the current mesh. The default background is white (the authors' run_dmtet): the
        silhouette is explicit, so no learned background is needed to keep density out of empty space."""
        from ..mesh.render import render_mesh

        vertices, faces = self.geometry.extract()
        if faces.shape[0] == 0:
            raise InputError("The fine stage's surface vanished (the SDF has one sign everywhere); "
                             "start again from the coarse run or lower fine.lr.")
        images, _ = render_mesh(self.rasterizer, vertices, faces, cameras, self.colour.albedo, shading,
                                light_dirs, ambient=ambient, background=background)
        return images, vertices, faces

    # --- TrainableStage ----------------------------------------------------------------------

    def step(self, iteration: int) -> float:
        from ..cameras import sample_cameras
        from ..guidance.base import GuidanceInputs

        if self.guidance is None:
            raise InputError("The fine stage has iterations left but no guidance was given; "
                             "run it with the diffusion models loaded.")
        cfg = self.cfg
        res = cfg.fine.resolution
        with section("render"):
            cameras = sample_cameras(cfg.camera, cfg.fine.batch, res, res, generator=self.generator).to(self.device)
            draw = self._draw(iteration)
            light = draw_lights(cameras.positions(), self.generator) if draw.shading == "lambertian" else None
            background = 1.0 if draw.background is None else draw.background
            images, vertices, faces = self.render(cameras, draw.shading, light, draw.ambient, background)
        with section("guidance"):
            landmark_maps = None if cfg.guidance.landmarks == "none" else \
                self.prior.landmark_maps(cameras, policy=cfg.guidance.back_views)
            out = self.guidance(GuidanceInputs(images=images, cameras=cameras, landmark_maps=landmark_maps,
                                               t_range=tuple(cfg.fine.t_range)))
            loss = out.loss
            if cfg.fine.lambda_laplacian > 0:
                loss = loss + cfg.fine.lambda_laplacian * laplacian_loss(vertices, faces)
            if cfg.fine.lambda_normal_consistency > 0:
                loss = loss + cfg.fine.lambda_normal_consistency * normal_consistency_loss(vertices, faces)
        with section("backward"):
            self.geometry_opt.zero_grad(set_to_none=True)
            self.colour_opt.zero_grad(set_to_none=True)
            loss.backward()
        with section("optimizer_step"):
            self.geometry_opt.step()
            self.colour_opt.step()
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        state = {"geometry": self.geometry.state_dict(), "colour": self.colour.state_dict(),
                 "geometry_opt": self.geometry_opt.state_dict(), "colour_opt": self.colour_opt.state_dict(),
                 "generator": self.generator.get_state()}
        guidance_gen = getattr(self.guidance, "generator", None)
        if guidance_gen is not None:
            state["guidance_generator"] = guidance_gen.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        geometry = {k: v.to(self.device) for k, v in state["geometry"].items()}
        if "offset_scale" not in geometry:  # saved before the fitted grid: the grid spanned the scene
            f = self.cfg.fine
            geometry["offset_scale"] = torch.tensor(f.max_offset_cells * 2.0 * self.cfg.coarse.bound / f.tet_resolution,
                                                    device=self.device)
        if any(geometry[k].shape != v.shape for k, v in self.geometry.state_dict().items()):
            self.geometry.resize_like(geometry)
            self._make_optimisers()
        self.geometry.load_state_dict(geometry)
        self.colour.load_state_dict(state["colour"])
        self.geometry_opt.load_state_dict(state["geometry_opt"])
        self.colour_opt.load_state_dict(state["colour_opt"])
        self.generator.set_state(state["generator"])
        guidance_gen = getattr(self.guidance, "generator", None)
        if guidance_gen is not None and "guidance_generator" in state:
            guidance_gen.set_state(state["guidance_generator"])

    def save_preview(self, iteration: int, directory: Path) -> Path:
        from ..cameras import preview_cameras
        from ..mesh.render import to_uint8_grid

        directory.mkdir(parents=True, exist_ok=True)
        size = min(self.cfg.fine.resolution, 256)
        with torch.no_grad():
            images, _, _ = self.render(preview_cameras(size, size, device=self.device), "lambertian")
        path = directory / f"fine_{iteration:06d}.png"
        to_uint8_grid(images).save(path)
        return path

    def mesh(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            vertices, faces = self.geometry.extract()
        return vertices.detach().float().cpu(), faces.cpu()


@dataclass(frozen=True)
class DensitySDF:
    """A signed-distance estimate from a density field: (threshold - density) / |grad density|, the
    gradient by central differences of `step` (the field's prior term carries no autograd gradient),
    negative inside the level set, clamped to +-limit where the density is flat."""

    density_fn: Callable[[torch.Tensor], torch.Tensor]
    threshold: float
    step: float
    limit: float = 1.0

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        density = self.density_fn(points).reshape(-1).float()
        offsets = torch.eye(3, device=points.device, dtype=points.dtype) * self.step
        grad = torch.stack([(self.density_fn(points + d).reshape(-1) - self.density_fn(points - d).reshape(-1))
                            for d in offsets], dim=-1).float() / (2.0 * self.step)
        dist = (self.threshold - density) / grad.norm(dim=-1).clamp_min(1e-6)
        return dist.clamp(-self.limit, self.limit)

    def sign_fn(self, points: torch.Tensor) -> torch.Tensor:
        """threshold - density: the estimate's sign at one density evaluation instead of seven (all
        that finding the occupied extent needs)."""
        return self.threshold - self.density_fn(points).reshape(-1).float()


def _initial_fields(cfg: "RunConfig", prior, coarse_dir: Path | None, device, colour):
    """The colour module and the SDF used to initialise the grid, from a coarse run or the prior."""
    if coarse_dir is not None:
        from .coarse import load_coarse

        field_ = load_coarse(Path(coarse_dir), cfg, prior, device).field
        cell = 2.0 * cfg.coarse.bound / cfg.fine.tet_resolution
        sdf_fn = DensitySDF(field_.density, cfg.fine.density_threshold, step=0.5 * cell)
        return (colour if colour is not None else field_), sdf_fn
    if colour is None:
        from ..nerf.field import HeadField

        colour = HeadField(cfg.coarse, prior, device=device)
    return colour, prior.signed_distance


def grid_bound(cfg: "RunConfig", sdf_fn: Callable[[torch.Tensor], torch.Tensor], device) -> float:
    """Half-size of the tet grid's cube: the occupied extent of the initial shape plus the margin (the
    authors' init_tet), at most the scene's bound (the colour field is defined only inside it); the
    scene's bound when `fine.fit_grid` is off or nothing is inside."""
    from ..mesh.tets import occupied_extent

    bound = cfg.coarse.bound
    if not cfg.fine.fit_grid:
        return bound
    # Only the sign matters here: a density-derived estimate offers a cheaper function of the same sign.
    extent = occupied_extent(getattr(sdf_fn, "sign_fn", sdf_fn), bound, device=device)
    return min(bound, extent + cfg.fine.grid_margin) if extent > 0 else bound


def fine_grid(cfg: "RunConfig", sdf_fn: Callable[[torch.Tensor], torch.Tensor], device):
    """The tet grid (a band around the initial surface) and the initial SDF at its vertices."""
    from ..mesh.tets import band_grid

    return band_grid(cfg.fine.tet_resolution, sdf_fn, bound=grid_bound(cfg, sdf_fn, device),
                     band_cells=cfg.fine.band_cells, device=device)


def build_fine_stage(cfg: "RunConfig", prior, guidance: "Guidance | None", device="cpu",
                     coarse_dir: Path | None = None, colour=None, stage_class: type | None = None,
                     **options: Any) -> FineStage:
    """The fine stage at its start (from the coarse run, or the prior), before any checkpoint is loaded.

    `stage_class` (a FineStage subclass) and its `options` let the SSD phases and edits reuse it.
    """
    device = torch.device(device)
    colour, sdf_fn = _initial_fields(cfg, prior, coarse_dir, device, colour)
    grid, sdf = fine_grid(cfg, sdf_fn, device)
    if not bool((sdf < 0).any()) or not bool((sdf > 0).any()):
        raise InputError("The initial shape has no surface inside the fine stage's grid; check the prior "
                         "(it must be a closed head inside the unit sphere once normalised) or the coarse run.")
    geometry = DMTetGeometry(grid, sdf, cfg.fine.max_offset_cells).to(device)
    return (stage_class or FineStage)(cfg, prior, guidance, colour, geometry, device, **options)


def run_fine(cfg: "RunConfig", prior, guidance: "Guidance | None", out_dir: Path,
             callbacks: RunCallbacks | None = None, device="cpu", coarse_dir: Path | None = None,
             colour=None) -> FineResult:
    """Train (or resume, or load when finished) the fine stage in `out_dir`.

    `colour` replaces the colour field (by default the coarse run's `HeadField`, or a fresh one).
    A finished checkpoint is loaded without training, so `guidance` may then be None.
    """
    device = torch.device(device)
    stage = build_fine_stage(cfg, prior, guidance, device, coarse_dir, colour)
    timings = run_stage(stage, Path(out_dir), callbacks,
                        StageSchedule(cfg.fine.checkpoint_every, cfg.fine.preview_every), device)
    vertices, faces = stage.mesh()
    return FineResult(vertices=vertices, faces=faces, colour=stage.colour, timings=timings)
