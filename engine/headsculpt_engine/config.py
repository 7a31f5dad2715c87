"""Run configuration as dataclasses, and the quality presets.

The defaults are the papers' numbers (HeadSculpt Table 2 and appendix A.1; HeadArtist appendix D):
the `paper` preset is the plain defaults. Other presets only lower iteration counts and resolutions.
Every field can be overridden from the command line with `--set section.field=value`.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .cameras import CameraSampling

PRESETS = ("paper", "standard", "draft", "tiny")
Preset = Literal["paper", "standard", "draft", "tiny"]

DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_FACE_CONTROLNET = "CrucibleAI/ControlNetMediaPipeFace"
DEFAULT_FACE_CONTROLNET_SUBFOLDER = "diffusion_sd15"
DEFAULT_IP2P_CONTROLNET = "lllyasviel/control_v11e_sd15_ip2p"
HEADARTIST_BASE_MODEL = "stabilityai/stable-diffusion-2-1-base"
# `headsculpt eval`'s CLIP: ViT-L/14, as HeadSculpt's Table 1 and HeadArtist's scores use.
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
# IP-Adapter for SD 1.5 (an image as prompt): its weights and its CLIP ViT-H/14 image encoder.
DEFAULT_IP_ADAPTER = "h94/IP-Adapter"


@dataclass
class ModelsConfig:
    """Which diffusion models to load, and how. `base` = "tiny" uses the project's tiny random models."""

    base: str = DEFAULT_BASE_MODEL
    face_controlnet: str = DEFAULT_FACE_CONTROLNET
    # Subfolder inside face_controlnet: "diffusion_sd15" for SD 1.5, "" for SD 2.1-base (repo root).
    face_controlnet_subfolder: str = DEFAULT_FACE_CONTROLNET_SUBFOLDER
    ip2p_controlnet: str = DEFAULT_IP2P_CONTROLNET
    # HeadArtist's base model: SSD runs use it (with the face ControlNet's SD 2.1 weights, at the
    # repository root) instead of `base` when `base` is the default and it is in the local cache
    # (guidance/ssd_models.py); "" keeps `base` for SSD too.
    ssd_base: str = HEADARTIST_BASE_MODEL
    allow_download: bool = False
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    attention_slicing: bool = False
    vae_slicing: bool = False
    cpu_offload: bool = False
    # A textual-inversion file that supplies `<back-view>` (see `headsculpt learn-token`).
    back_view_token_file: str = ""
    back_view_token: str = "<back-view>"
    # Fast path (docs/benchmarks.md, "Full pipeline (bench)"): the UNet and ControlNets in the
    # channels-last memory format on CUDA (the layout its convolution kernels prefer), and
    # torch.compile of the UNet, ControlNets and VAE encoder (the first steps compile for minutes, so
    # it is off by default).
    channels_last: bool = True
    compile: bool = False
    # Style LoRAs loaded into the UNet (files, folders or Hub ids; models/lora.py), each with its scale.
    loras: tuple[str, ...] = ()
    lora_scales: tuple[float, ...] = ()
    # Where the IP-Adapter and its image encoder come from when a run has an image prompt
    # (the h94/IP-Adapter layout: models/ip-adapter_sd15.safetensors, models/image_encoder/).
    ip_adapter: str = DEFAULT_IP_ADAPTER


@dataclass
class GuidanceConfig:
    """Score distillation settings (HeadSculpt Eq. 1, 5, 7; HeadArtist Eq. 6)."""

    kind: Literal["sds", "ssd"] = "sds"
    guidance_scale: float = 100.0
    t_range: tuple[float, float] = (0.02, 0.98)
    # Renders are resized to this square size before the VAE encodes them (512 for SD 1.5).
    resolution: int = 512
    controlnet_scale: float = 1.0
    grad_clip: float = 0.0  # 0: off; else clip |grad| elementwise to this value
    # All classifier-free-guidance branches in one batched UNet call (fast path). False: one call per
    # branch, which lowers the peak memory of the UNet's activations on small GPUs at some speed.
    batched_cfg: bool = True
    # Back views have an empty landmark map. "none": predict without ControlNet (HeadSculpt);
    # "oval": draw only the face oval and keep the ControlNet (HeadArtist); "auto": "oval" for SSD,
    # else "none" (each paper's own).
    back_view_policy: Literal["auto", "none", "oval"] = "auto"
    prompt_prefix: str = ""
    negative_prompt: str = ""
    # HeadArtist SSD
    ssd_geometry_scale: float = 100.0
    ssd_texture_scale: float = 7.5
    ssd_negative_prompt: str = "worst quality, low quality, semi-realistic"
    ssd_geometry_t_max: float = 0.5
    # Texture t_max: the first value, stepping down to the second after `ssd_texture_t_step`
    # texture iterations (HeadArtist appendix D: 0.98, then 0.7 after 5000 iterations).
    ssd_texture_t_max: tuple[float, float] = (0.98, 0.7)
    ssd_texture_t_step: int = 5000
    # HeadSculpt IESD
    edit_scale: float = 0.6  # w_e
    # CFG scale of the edit (instruction) side; the identity side uses guidance_scale. The paper does
    # not state it; the authors' code guides both sides with its one text scale, 100 (sd.py `self.gs`).
    edit_guidance_scale: float = 100.0
    ip2p_scale: float = 1.0  # conditioning scale of the InstructPix2Pix ControlNet
    # How `edit` distils: "iesd" (Eq. 7), or the paper's ablations "b3" (a new fine stage guided by plain
    # SDS with the instruction-altered prompt, no InstructPix2Pix) and "b5" (IESD with w_e = 1).
    edit_mode: Literal["iesd", "b3", "b5"] = "iesd"
    # "prior": the face ControlNet on the prior's landmark maps (both papers); "none": no landmark
    # control at all, the plain diffusion model with view prompts (the density prior stays on), for heads
    # with no face to mark. Not in either paper: it trades view consistency for reaching any head.
    landmarks: Literal["prior", "none"] = "prior"
    # An image as prompt (IP-Adapter, guidance/image_prompt.py): the image file, its scale on front and
    # side views, and on back views (0: a frontal reference would paint a face on the back of the head).
    image: str = ""
    image_scale: float = 1.0
    image_back_scale: float = 0.0

    @property
    def back_views(self) -> Literal["none", "oval"]:
        """The back-view policy in effect ("auto" resolved by the guidance kind)."""
        if self.back_view_policy == "auto":
            return "oval" if self.kind == "ssd" else "none"
        return self.back_view_policy


@dataclass
class CoarseConfig:
    """Coarse stage: a NeRF on the head prior (HeadSculpt Sec. 3.1, Table 2, A.1)."""

    iterations: int = 7000  # Table 2 also lists 70,000; set coarse.iterations=70000 for that
    batch: int = 4
    resolution: int = 64
    lr: float = 1e-3
    # The hash grid learns at grid_lr_scale * lr, and Adam's epsilon is 1e-15: the authors' code
    # (network_grid.get_params, main.py), which Table 2's single lr 1e-3 does not show. Hash-grid
    # entries get sparse, small gradients; Instant-NGP trains them at 1e-2 with eps 1e-15 for that.
    grid_lr_scale: float = 10.0
    adam_eps: float = 1e-15
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    # Hash-grid encoding: 16 levels x 2 features, base resolution 16, 2^19 entries, finest ~2048.
    grid_levels: int = 16
    grid_features: int = 2
    grid_base_resolution: int = 16
    grid_log2_table_size: int = 19
    grid_finest_resolution: int = 2048
    # "auto": tiny-cuda-nn when it imports and the device is CUDA, else the PyTorch hash grid.
    encoding_backend: Literal["auto", "torch", "tcnn"] = "auto"
    mlp_hidden: tuple[int, ...] = (64, 64)
    bound: float = 1.0  # the scene lives in [-bound, bound]^3
    samples_per_ray: int = 128
    occupancy_grid_resolution: int = 128
    occupancy_update_every: int = 16
    # Cells whose density estimate falls below this are skipped; also the marching-cubes level.
    # 10 is stable-dreamfusion's density threshold, which HeadSculpt's code builds on.
    density_threshold: float = 10.0
    occupancy_decay: float = 0.95  # EMA decay of the cell estimates at each update (Instant-NGP)
    # "mlp": a small learned MLP on the view direction; "random": a random solid colour per view;
    # "white": a fixed white background.
    background: Literal["mlp", "random", "white"] = "mlp"
    mesh_resolution: int = 128  # marching-cubes grid of coarse_mesh.obj over [-bound, bound]^3
    prior_sharpness: float = 0.005  # `a` of Eq. 3
    # Shading schedule of the authors' code (nerf/utils.py train_step), shared by the fine stage:
    # warm-up iterations shade with `warmup_shading` ("normal": the normal map; "albedo": the code's
    # --albedo), ambient 1, the default background; in the coarse stage a normal warm-up feeds
    # [normal map, opacity] to the UNet as its 4-channel latent (Fantasia3D), skipping the VAE.
    warmup_iterations: int = 2000
    warmup_shading: Literal["normal", "albedo"] = "normal"
    warmup_as_latent: bool = True
    # After warm-up: normal-map iterations with this probability, else lambertian; ambient drawn
    # uniformly from ambient_range each iteration; a random solid background with this probability.
    normal_ratio: float = 0.2
    ambient_range: tuple[float, float] = (0.1, 1.0)
    random_background_ratio: float = 0.5
    # stable-dreamfusion's regularisers at the authors' weights: binary entropy of the per-sample
    # weights (log2, its lambda ramped up over the first half of the run) and the orientation penalty.
    lambda_entropy: float = 5e-4
    lambda_orientation: float = 5e-4
    # Normals for shading: "predicted" by the MLP head (A.1), or "gradient" = -grad(sigma) by central
    # differences (the shape itself; six more density evaluations per sample).
    shading_normals: Literal["predicted", "gradient"] = "predicted"
    # Pulls the predicted normals towards the density-gradient normals (Ref-NeRF), so that shading
    # with predicted normals follows the geometry; 0 = off.
    lambda_normal_consistency: float = 0.0
    checkpoint_every: int = 500
    preview_every: int = 500


@dataclass
class FineConfig:
    """Fine stage: DMTet refinement (HeadSculpt Sec. 3.1 (2), Table 2, A.1)."""

    iterations: int = 5000
    # HeadArtist's SSD runs instead of this stage: 15,000 geometry then 20,000 texture iterations.
    ssd_geometry_iterations: int = 15000
    ssd_texture_iterations: int = 20000
    batch: int = 4
    resolution: int = 512
    # The authors' grid: 256, rescaled to the cube the initial shape occupies plus `grid_margin`
    # (nerf/renderer.py init_tet: scale = max |v| over occupied vertices + 0.1); `fit_grid` false keeps
    # the grid on [-bound, bound].
    tet_resolution: int = 256
    fit_grid: bool = True
    grid_margin: float = 0.1
    lr: float = 1e-2  # SDF values and vertex offsets
    color_lr: float = 1e-3
    t_range: tuple[float, float] = (0.02, 0.5)
    # The authors' code: 0.2 * mean_i ||(L v)_i|| with the uniform graph Laplacian L = D - A.
    lambda_laplacian: float = 0.2
    # Mesh normal consistency, mean over shared edges of 1 - cos(angle between the two faces' normals):
    # off in HeadSculpt's code (lambda_normal 0). HeadArtist's geometry phase weights it 8000 and the
    # same Laplacian 10000 (its threestudio base has these loss definitions, and the same 0.5 * ||.||^2
    # distillation loss, so its weights carry over); `stages/ssd.py` uses the ssd_ values.
    lambda_normal_consistency: float = 0.0
    ssd_lambda_normal_consistency: float = 8000.0
    ssd_lambda_laplacian: float = 10000.0
    # Normal-map iterations before the shading schedule starts (the authors' code keeps its 2000
    # warm-up iterations in DMTet, rendered as RGB through the VAE).
    warmup_iterations: int = 2000
    max_offset_cells: float = 0.5  # |dv_i| bounded to this many tet-grid cells
    # DMTet keeps only the cells within this many cells of the initial surface (the full 256 grid holds
    # 100M tetrahedra); sign flips and offsets can move the surface anywhere inside that band. A
    # deviation from the authors' full grid, for memory (docs/fidelity.md): 12 cells of the fitted
    # 256 grid are about 0.065 of the normalised frame (head radius 0.7) on either side of the start.
    band_cells: float = 12.0
    # Coarse density taken as the surface when initialising from a coarse run: tau(0) = 1 / (2a) with
    # a = 0.005 (Eq. 3), the density the prior itself has on its surface.
    density_threshold: float = 100.0
    rasterizer: Literal["auto", "torch", "nvdiffrast"] = "auto"
    checkpoint_every: int = 500
    preview_every: int = 500


@dataclass
class ExportConfig:
    # Quadric decimation to at most this many faces before the unwrap (mesh/hygiene.py); 50,000 as
    # the authors' code decimates; 0 keeps every marching-tetrahedra triangle.
    target_faces: int = 50000
    # Loose components whose bounding-box diagonal is below this share of the whole mesh's are removed
    # (the project's rule; the largest component always stays); 0 keeps them all.
    min_component_share: float = 0.05
    texture_size: int = 2048
    formats: tuple[str, ...] = ("glb", "obj")
    turntable_frames: int = 24
    turntable_resolution: int = 256
    # xatlas runs in a child process: a crash (xatlas 0.0.11 segfaults on some meshes) or a run past
    # this many seconds falls back to the project's own box-projection unwrap instead of failing.
    unwrap_timeout_s: float = 120.0


@dataclass
class RunConfig:
    """Everything one generation (or edit) run needs besides the prior mesh."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    preset: Preset = "paper"
    device: str = "auto"  # auto: cuda when available, else cpu
    models: ModelsConfig = field(default_factory=ModelsConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    camera: CameraSampling = field(default_factory=CameraSampling)
    coarse: CoarseConfig = field(default_factory=CoarseConfig)
    fine: FineConfig = field(default_factory=FineConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return _from_dict(cls, data)


def preset_config(name: str) -> RunConfig:
    """The configuration of a quality preset (paper = the papers' numbers)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
    cfg = RunConfig(preset=name)  # type: ignore[arg-type]
    if name == "standard":
        cfg.coarse.iterations, cfg.fine.iterations = 3000, 2000
        cfg.coarse.warmup_iterations, cfg.fine.warmup_iterations = 900, 800
        cfg.fine.ssd_geometry_iterations, cfg.fine.ssd_texture_iterations = 5000, 7000
        cfg.guidance.ssd_texture_t_step = 1750
    elif name == "draft":
        cfg.coarse.iterations, cfg.fine.iterations = 1000, 500
        cfg.coarse.warmup_iterations, cfg.fine.warmup_iterations = 300, 200
        cfg.fine.ssd_geometry_iterations, cfg.fine.ssd_texture_iterations = 1000, 1000
        cfg.guidance.ssd_texture_t_step = 250
        cfg.fine.resolution, cfg.fine.tet_resolution, cfg.fine.band_cells = 256, 64, 4.0
        cfg.export.texture_size = 1024
    elif name == "tiny":
        # For CPU smoke runs with the tiny random models: every stage runs, in seconds.
        cfg.models.base = "tiny"
        cfg.coarse.iterations, cfg.fine.iterations = 6, 4
        cfg.coarse.resolution, cfg.coarse.samples_per_ray = 32, 32
        cfg.coarse.grid_log2_table_size, cfg.coarse.grid_finest_resolution = 14, 256
        cfg.coarse.occupancy_grid_resolution, cfg.coarse.warmup_iterations = 32, 2
        # The orientation penalty's density-gradient normals cost six more density evaluations per
        # sample (several times a tiny coarse step's cost on this CPU): left out of the smoke preset.
        cfg.coarse.lambda_orientation = 0.0
        cfg.fine.warmup_iterations = 1
        cfg.fine.ssd_geometry_iterations = cfg.fine.ssd_texture_iterations = 4
        cfg.guidance.ssd_texture_t_step = 2
        cfg.coarse.checkpoint_every = cfg.coarse.preview_every = 3
        cfg.fine.resolution, cfg.fine.tet_resolution, cfg.fine.band_cells = 64, 32, 4.0
        cfg.fine.checkpoint_every = cfg.fine.preview_every = 2
        cfg.guidance.resolution = 64
        cfg.export.texture_size, cfg.export.turntable_frames, cfg.export.turntable_resolution = 256, 4, 64
        cfg.export.target_faces = 8000  # below the ~13k faces of a tiny run (fitted grid), so that decimation runs too
    return cfg


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.field=value` strings (values parsed by the field's type) in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"Override {item!r} is not of the form section.field=value.")
        target: Any = cfg
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not hasattr(target, part) or not dataclasses.is_dataclass(getattr(target, part)):
                raise ValueError(f"Unknown setting section {part!r} in {item!r}.")
            target = getattr(target, part)
        name = parts[-1]
        fields = {f.name: f for f in dataclasses.fields(target)}
        if name not in fields:
            raise ValueError(f"Unknown setting {key!r}; known in this section: {', '.join(fields)}.")
        hints = typing.get_type_hints(type(target))
        value = _parse_value(raw.strip(), hints[name], key)
        setattr(target, name, value)
    return cfg


def _parse_value(raw: str, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint in (int, float, str):
            return hint(raw)
        if origin is Literal:
            if raw not in typing.get_args(hint):
                raise ValueError
            return raw
        if origin is tuple:
            args = typing.get_args(hint)
            items = [s for s in raw.strip("()[] ").split(",") if s.strip()]
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(args[0](s.strip()) for s in items)
            if len(items) != len(args):
                raise ValueError
            return tuple(t(s.strip()) for t, s in zip(args, items))
    except ValueError:
        pass
    else:
        raise ValueError(f"Setting {key!r} has a type that cannot be set from the command line.")
    raise ValueError(f"Setting {key!r}: {raw!r} is not a valid {getattr(hint, '__name__', hint)}.")


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)
