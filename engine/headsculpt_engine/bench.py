"""`headsculpt bench`: the time of a warm iteration of each stage, where it goes, and what a full run
of the papers' length would take (docs/benchmarks.md, "Full pipeline (bench)").

Each stage is built as a run builds it (the real renderers, the real guidance code path) on the
built-in head prior, run for some untimed warm-up iterations, then timed. The split comes from the
`profiling` sections the stages and the guidance mark: render (including M_pi for an edit), VAE
encode, UNet + ControlNet(s), the rest of the guidance step (landmark maps, noise, the loss),
backward and optimizer step; "other" is what no section covers. The bench also reports the checks of
the fast path: which attention processor the UNet uses, the memory format, whether the UNet is
compiled, whether the text encoder ran again for a prompt it had embedded (it must not: embeddings
are cached) and whether autograd recorded the UNet (it must not: the guidance gradient is formed
without backpropagating through it).
"""
from __future__ import annotations

import copy
import math
import platform
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from .config import CoarseConfig, FineConfig, RunConfig, apply_overrides
from .devices import resolve_device
from .fast_path import VARIANTS, Variant, fast_path_report
from .profiling import medians, time_steps

if TYPE_CHECKING:
    import torch

    from .models.loading import DiffusionModels

STAGES = ("coarse", "fine", "edit")
# The phases of an iteration, in the order the table lists them.
SPLIT = ("render", "vae_encode", "unet_controlnet", "guidance", "backward", "optimizer_step", "other")
# A full run at the papers' settings: 7,000 coarse and 5,000 fine iterations (HeadSculpt appendix A.1);
# an edit is a fine stage of the same length.
PAPER_ITERATIONS = {"coarse": CoarseConfig().iterations, "fine": FineConfig().iterations,
                    "edit": FineConfig().iterations}
# Issue #10's per-iteration targets on one H100 at the papers' settings (a full run in 15 minutes).
TARGET_SECONDS = {"coarse": 0.06, "fine": 0.09}
# Issue #6's budget: an edit iteration (IESD) costs at most this many fine-stage (SDS) iterations.
EDIT_BUDGET_RATIO = 2.2


@dataclass
class BenchRequest:
    """What to time: stages, models ("tiny", "sd15-random", "default" or a folder), device, iterations."""

    stages: tuple[str, ...] = STAGES
    models: str = "sd15-random"
    device: str = "auto"
    iterations: int = 5
    warmup: int = 2
    prompt: str = "a DSLR portrait of an old man"
    instruction: str = "make him wear glasses"
    ablate: bool = False  # also time each stage once per `fast_path.VARIANTS` entry


def cpu_cost_warning(cfg: RunConfig, models: str, device: "torch.device") -> str | None:
    """A plain warning when the request will be very slow or run out of memory on a CPU: the SD 1.5
    networks at guidance 512 take about half a minute per view and step here, and four views at once
    went past 18 GB (docs/benchmarks.md)."""
    from .models.loading import SD15_RANDOM

    views = max(cfg.coarse.batch, cfg.fine.batch)
    if device.type != "cpu" or models == "tiny" or cfg.guidance.resolution < 512:
        return None
    return (f"Timing the {'SD 1.5' if models == SD15_RANDOM else models} networks at guidance "
            f"{cfg.guidance.resolution} on the CPU: about half a minute per view and step, and {views} views "
            f"at once may need more than 18 GB of memory. For a quick look add --set guidance.resolution=128, "
            f"or --set coarse.batch=1 --set fine.batch=1.")


def load_bench_models(cfg: RunConfig, name: str, device: "torch.device", with_ip2p: bool) -> "DiffusionModels":
    """The bench's models: `sd15-random` (built here, see `models.sd15_random`) or what `--models` loads."""
    from .models.loading import SD15_RANDOM, load_diffusion_models, models_config_from_cli

    if name == SD15_RANDOM:
        from .models.sd15_random import build_sd15_random_models

        return build_sd15_random_models(cfg.models, device, with_ip2p=with_ip2p)
    return load_diffusion_models(models_config_from_cli(name, cfg.models), device, with_ip2p=with_ip2p)


def build_stage(kind: str, cfg: RunConfig, prior, models: "DiffusionModels", device: "torch.device",
                instruction: str):
    """A stage at its start, as a run builds it: coarse on the prior; fine and edit on the prior's shape
    (no coarse run to start from: the cost of an iteration does not depend on where it started)."""
    from .guidance.factory import build_guidance

    if kind == "coarse":
        from .stages.coarse import CoarseStage

        return CoarseStage(cfg, prior, build_guidance(cfg, models), device)
    if kind == "fine":
        from .stages.fine import build_fine_stage

        return build_fine_stage(cfg, prior, build_guidance(cfg, models), device)
    if kind == "edit":  # IESD, with its frozen pre-edit avatar for M_pi
        from .guidance.factory import build_edit_guidance
        from .stages.fine import build_fine_stage
        from .stages.refine import FrozenAvatar, RefineStage

        edit = build_fine_stage(cfg, prior, build_edit_guidance(cfg, models, cfg.prompt, instruction), device,
                                stage_class=RefineStage, name="edit", reference=True)
        edit.reference = FrozenAvatar.from_stage(edit)
        return edit
    raise ValueError(f"Unknown stage {kind!r}: one of {', '.join(STAGES)}.")


class ModelWatch:
    """Forward hooks that record the prompts the text encoder encodes (as token rows) and whether
    autograd recorded the UNet (grad mode on, or an output that carries a graph)."""

    def __init__(self, models: "DiffusionModels"):
        self.text_encoder_calls = 0
        self.encoded_rows: list[tuple[int, ...]] = []
        self.unet_calls = 0
        self.unet_autograd = False
        self._handles = [models.text_encoder.register_forward_hook(self._text_encoder_ran, with_kwargs=True),
                         models.unet.register_forward_hook(self._unet_ran)]

    def _text_encoder_ran(self, module, args, kwargs, output) -> None:
        self.text_encoder_calls += 1
        input_ids = args[0] if args else kwargs["input_ids"]
        self.encoded_rows += [tuple(row) for row in input_ids.tolist()]

    @property
    def repeated_prompts(self) -> int:
        """Prompts encoded more than once (0 when the embeddings cache works)."""
        return len(self.encoded_rows) - len(set(self.encoded_rows))

    def _unet_ran(self, module, args, output) -> None:
        import torch

        self.unet_calls += 1
        outputs = output if isinstance(output, (tuple, list)) else (getattr(output, "sample", output),)
        recorded = any(isinstance(o, torch.Tensor) and o.requires_grad for o in outputs)
        self.unet_autograd = self.unet_autograd or recorded or torch.is_grad_enabled()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


class MemoryMeter:
    """Peak memory while a stage runs: `torch.cuda.max_memory_allocated` on CUDA; on the CPU the
    process's resident set size (psutil), sampled every `interval` seconds by a background thread
    (a step's activations come and go within the step, so sampling between steps would miss them)."""

    def __init__(self, device: "torch.device", interval: float = 0.005):
        self.device = device
        self.interval = interval
        self.peak_bytes = 0
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "rss"

    def __enter__(self) -> "MemoryMeter":
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import threading

        import psutil

        process = psutil.Process()
        self._stop = threading.Event()

        def watch() -> None:
            while True:
                self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=watch, name="bench-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()


def flop_counter():
    """PyTorch's FlopCounterMode, taught the CPU's fused attention kernel (it knows only the CUDA ones,
    and would count no attention at all on the CPU)."""
    import torch
    from torch.utils import flop_counter as fc

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    return fc.FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward})


def count_step_flops(stage, iteration: int, models: "DiffusionModels") -> dict[str, Any]:
    """The arithmetic of one more step, in TFLOP, counted by `flop_counter` (matrix products,
    convolutions, attention, forward and backward; tiny-cuda-nn's fused kernels are not seen), split
    by network: UNet, ControlNet(s), VAE, and the rest (renderer, field, loss)."""
    with flop_counter() as counter:
        stage.step(iteration)
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    # The counter names a module called at the top level by its class; the codec calls the VAE's
    # `encode`, which runs its encoder (its 1x1 quant_conv, a negligible part, counts as "other").
    names = {"unet": [type(models.unet).__name__], "controlnets": [type(models.face_controlnet).__name__],
             "vae": [type(models.vae).__name__, type(models.vae.encoder).__name__]}
    split = {part: sum(by_module.get(name, 0) for name in found) / 1e12 for part, found in names.items()}
    total = counter.get_total_flops() / 1e12
    split["other"] = max(total - sum(split.values()), 0.0)
    return {"tflop_per_iteration": total, "tflop_split": split}


def stage_backends(stage) -> dict[str, str]:
    """The hash grid (torch or tiny-cuda-nn) and rasteriser (torch or nvdiffrast) a stage runs on."""
    if hasattr(stage, "model"):  # coarse: a NeRF
        return {"hash_grid": stage.model.field.backend}
    return {"hash_grid": getattr(stage.colour, "backend", type(stage.colour).__name__),
            "rasterizer": stage.rasterizer.name}


def bench_stage(kind: str, cfg: RunConfig, prior, models: "DiffusionModels", device: "torch.device",
                request: BenchRequest, progress: Callable[[int], None] | None = None,
                variant: Variant | None = None) -> dict[str, Any]:
    """Median seconds of a warm iteration of one stage, its split, peak memory and the model checks;
    with a `variant`, of the stage with that part of the fast path turned off."""
    import torch

    if variant is not None:
        cfg = apply_overrides(copy.deepcopy(cfg), list(variant.overrides))
    # The timed iterations are the steady state, past the shading warm-up (whose coarse normal-map
    # latents skip the VAE): a conservative figure for the projection.
    cfg = copy.deepcopy(cfg)
    cfg.coarse.warmup_iterations = cfg.fine.warmup_iterations = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # every stage (and variant) starts from the same draws
        stage = build_stage(kind, cfg, prior, models, device, request.instruction)
        with variant.applied(stage, models) if variant is not None else nullcontext():
            result = _time_stage(kind, stage, models, device, request, progress)
        if variant is None:
            result.update(count_step_flops(stage, request.warmup + request.iterations, models))
            if progress is not None:
                progress(request.warmup + request.iterations + 1)
            result["achieved_tflops"] = result["tflop_per_iteration"] / result["median_seconds_per_iteration"]
            if kind in TARGET_SECONDS:
                result["target_seconds_per_iteration"] = TARGET_SECONDS[kind]
                result["tflops_needed_for_target"] = result["tflop_per_iteration"] / TARGET_SECONDS[kind]
        return result


def _time_stage(kind: str, stage, models: "DiffusionModels", device: "torch.device", request: BenchRequest,
                progress: Callable[[int], None] | None) -> dict[str, Any]:
    attention = fast_path_report(models)["attention_processors"]
    watch = ModelWatch(models)
    nonfinite = []

    def after_step(record: dict, loss: float) -> None:
        # Random fp16 weights could overflow; a non-finite loss makes the GradScaler skip the optimiser
        # step, which would make that phase look cheaper than it is.
        if not math.isfinite(loss):
            nonfinite.append(loss)

    if progress is not None:
        progress(0)  # the bar appears (and its clock starts) before the first step
    try:
        with MemoryMeter(device) as meter:
            records = time_steps(stage, request.iterations, request.warmup, device, after_step=after_step,
                                 progress=progress)
    finally:
        watch.close()
    typical = medians(records)
    median = typical.pop("total")
    coarse = {}
    if kind == "coarse":  # the share of ray samples the occupancy grid let through, last step
        c = stage.cfg.coarse
        coarse["evaluated_sample_share"] = stage.last_samples_evaluated / (c.batch * c.resolution ** 2 * c.samples_per_ray)
    return {
        **coarse,
        "backends": stage_backends(stage),
        "iterations": request.iterations,
        "warmup": request.warmup,
        "median_seconds_per_iteration": median,
        "min_seconds_per_iteration": min(r["total"] for r in records),
        "median_cpu_seconds_per_iteration": typical["cpu_total"],
        "split_median_seconds": {name: typical.get(name, 0.0) for name in SPLIT},
        "peak_memory_mb": meter.peak_bytes / 2 ** 20,
        "memory_kind": meter.kind,
        "paper_iterations": PAPER_ITERATIONS[kind],
        "projected_paper_seconds": median * PAPER_ITERATIONS[kind],
        "steps": request.warmup + request.iterations,
        "text_encoder_calls": watch.text_encoder_calls,
        "prompts_encoded": len(watch.encoded_rows),
        "prompts_encoded_again": watch.repeated_prompts,
        "unet_calls": watch.unet_calls,
        "unet_autograd": watch.unet_autograd,
        "attention_processors": attention,
        "nonfinite_losses": len(nonfinite),
    }


def machine_description(device: "torch.device") -> dict[str, Any]:
    import os

    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_bench(cfg: RunConfig, request: BenchRequest, prior=None,
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Time `request.stages` with `cfg`'s settings; the result is what `--json` writes."""
    from .prior import builtin_prior

    unknown = set(request.stages) - set(STAGES)
    if unknown or not request.stages:
        raise ValueError(f"Stages must be some of {', '.join(STAGES)}, not {sorted(unknown) or 'none'}.")
    if request.iterations < 1 or request.warmup < 0:
        raise ValueError("The bench needs at least one timed iteration and a warm-up of 0 or more.")
    device = resolve_device(request.device)
    cfg.prompt = cfg.prompt or request.prompt
    prior = prior if prior is not None else builtin_prior()
    models = load_bench_models(cfg, request.models, device, with_ip2p="edit" in request.stages)
    steps = request.warmup + request.iterations

    def reporter(label: str, total: int = steps) -> Callable[[int], None] | None:
        return (lambda done: progress(label, done, total)) if progress is not None else None

    # The fast path's run of each stage takes one more step, whose arithmetic is counted.
    stages = {kind: bench_stage(kind, cfg, prior, models, device, request, reporter(kind, steps + 1))
              for kind in request.stages}
    ablation = {}
    for variant in VARIANTS if request.ablate else ():
        timed = {}
        for kind in (k for k in request.stages if k in variant.stages):
            timed[kind] = bench_stage(kind, cfg, prior, models, device, request,
                                      reporter(f"{kind} {variant.name}"), variant)
            timed[kind]["slowdown"] = (timed[kind]["median_seconds_per_iteration"]
                                       / stages[kind]["median_seconds_per_iteration"])
        if timed:
            ablation[variant.name] = {"description": variant.description, "overrides": list(variant.overrides),
                                      "stages": timed}
    projected = None
    if "coarse" in stages and "fine" in stages:
        projected = stages["coarse"]["projected_paper_seconds"] + stages["fine"]["projected_paper_seconds"]
    edit_ratio = None
    if "fine" in stages and "edit" in stages:
        edit_ratio = stages["edit"]["median_seconds_per_iteration"] / stages["fine"]["median_seconds_per_iteration"]
    g, c, f = cfg.guidance, cfg.coarse, cfg.fine
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(device),
        "device": str(device),
        "models": request.models,
        "preset": cfg.preset,
        "settings": {"guidance_resolution": g.resolution, "coarse_resolution": c.resolution, "coarse_batch": c.batch,
                     "coarse_samples_per_ray": c.samples_per_ray, "fine_resolution": f.resolution,
                     "fine_batch": f.batch, "fine_tet_resolution": f.tet_resolution},
        "fast_path": fast_path_report(models),
        "stages": stages,
        "projected_paper_run_seconds": projected,
        "edit_to_fine_ratio": edit_ratio,
        "edit_budget_ratio": EDIT_BUDGET_RATIO,
        "ablation": ablation,
    }


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def format_table(result: dict[str, Any]) -> str:
    """The result as a plain-text table: one row per stage, seconds per iteration and per phase."""
    head = ["stage", "s/it", *SPLIT, "peak MB", "paper its", "projected"]
    rows = []
    for kind, s in result["stages"].items():
        rows.append([kind, f"{s['median_seconds_per_iteration']:.3f}",
                     *(f"{s['split_median_seconds'][name]:.3f}" for name in SPLIT),
                     f"{s['peak_memory_mb']:.0f}", str(s["paper_iterations"]), _duration(s["projected_paper_seconds"])])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [head, *rows]]
    fast = result["fast_path"]
    lines += [
        "",
        f"device {result['device']}, models {result['models']} ({fast['dtype']}), preset {result['preset']}, "
        f"guidance at {result['settings']['guidance_resolution']}px; memory: "
        + ", ".join(sorted({s['memory_kind'] for s in result["stages"].values()})),
        f"attention: {', '.join(f'{k} {v}' for k, v in fast['attention_processors'].items())}; "
        f"channels-last {fast['channels_last']}; compiled: {', '.join(fast['compiled']) or 'none'}",
        f"full paper run (coarse + fine): {_duration(result['projected_paper_run_seconds'])}",
    ]
    if result["edit_to_fine_ratio"] is not None:
        lines.append(f"an edit iteration costs {result['edit_to_fine_ratio']:.2f} fine iterations "
                     f"(budget {result['edit_budget_ratio']})")
    lines += ["", "arithmetic of one iteration (FlopCounterMode) and the rate it ran at:"]
    for kind, s in result["stages"].items():
        split = ", ".join(f"{part} {value:.3g}" for part, value in s["tflop_split"].items())
        needed = (f"; the H100 target of {s['target_seconds_per_iteration']} s/it needs "
                  f"{s['tflops_needed_for_target']:.3g} TFLOP/s" if "target_seconds_per_iteration" in s else "")
        lines.append(f"  {kind}: {s['tflop_per_iteration']:.3g} TFLOP ({split}), ran at "
                     f"{s['achieved_tflops']:.3g} TFLOP/s{needed}")
    if result["ablation"]:
        lines += ["", "fast path, one part off at a time (s/it, and times the fast path's):"]
        for name, entry in result["ablation"].items():
            cells = [f"{kind} {s['median_seconds_per_iteration']:.3f} (x{s['slowdown']:.2f})"
                     for kind, s in entry["stages"].items()]
            lines.append(f"  {name}: {', '.join(cells)}  [{entry['description']}]")
    if result["preset"] != "paper":
        lines.append(f"(timed with the {result['preset']} preset's settings: the projection is their time per "
                     f"iteration times the papers' iteration counts, not a paper-settings figure)")
    return "\n".join(lines)
