"""`headsculpt bench`: the report's fields, the phase profiler, and the `sd15-random` models."""
from __future__ import annotations

import json
import math
import time

import pytest

from headsculpt_engine import profiling
from headsculpt_engine.bench import SPLIT, STAGES
from headsculpt_engine.cli import main


def test_bench_tiny_all_stages_reports_every_field(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--models", "tiny", "--device", "cpu", "--stage", "all", "--preset", "tiny",
                 "--iters", "1", "--warmup", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for kind in STAGES:
        assert kind in printed
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["models"] == "tiny" and result["preset"] == "tiny"
    assert {"platform", "processor", "cpu_count", "torch", "torch_threads"} <= set(result["machine"])
    assert result["settings"]["guidance_resolution"] == 64
    fast = result["fast_path"]
    assert fast["attention_processors"] == {name: ["AttnProcessor2_0"]
                                            for name in ("unet", "face_controlnet", "ip2p_controlnet")}
    assert fast["dtype"] == "float32" and fast["channels_last"] is False and fast["compiled"] == []
    assert set(result["stages"]) == set(STAGES)
    for kind, stage in result["stages"].items():
        median = stage["median_seconds_per_iteration"]
        assert math.isfinite(median) and median > 0 and stage["median_cpu_seconds_per_iteration"] > 0
        assert stage["backends"]["hash_grid"] == "torch"  # tiny-cuda-nn and nvdiffrast only on CUDA
        assert stage["backends"].get("rasterizer", "torch") == "torch"
        assert stage["iterations"] == 1 and stage["warmup"] == 1 and stage["steps"] == 2
        split = stage["split_median_seconds"]
        assert list(split) == list(SPLIT)
        assert all(math.isfinite(v) and v >= 0 for v in split.values())
        # Every stage renders, encodes, runs the UNet, backpropagates and steps its optimiser.
        for phase in ("render", "vae_encode", "unet_controlnet", "backward", "optimizer_step"):
            assert split[phase] > 0, (kind, phase)
        assert sum(split.values()) < 3 * median  # medians of parts of the same steps
        assert stage["memory_kind"] == "rss" and 100 < stage["peak_memory_mb"] < 64_000
        assert stage["projected_paper_seconds"] == pytest.approx(median * stage["paper_iterations"])
        assert stage["unet_calls"] == 2 and stage["unet_autograd"] is False and stage["nonfinite_losses"] == 0
        assert stage["prompts_encoded_again"] == 0  # text embeddings come from the cache
    assert result["stages"]["coarse"]["prompts_encoded"] > 0  # the first stage fills the cache
    for kind, stage in result["stages"].items():
        split = stage["tflop_split"]
        assert min(split["unet"], split["controlnets"], split["vae"]) > 0 and split["other"] >= 0, kind
        assert sum(split.values()) == pytest.approx(stage["tflop_per_iteration"])
        assert stage["achieved_tflops"] == pytest.approx(stage["tflop_per_iteration"]
                                                         / stage["median_seconds_per_iteration"])
    # The edit's UNet runs four branches to the fine stage's two, on the same latents: twice the arithmetic.
    unet = {kind: result["stages"][kind]["tflop_split"]["unet"] for kind in STAGES}
    assert unet["edit"] == pytest.approx(2 * unet["fine"]) and unet["coarse"] == pytest.approx(unet["fine"])
    assert result["stages"]["coarse"]["tflops_needed_for_target"] == pytest.approx(
        result["stages"]["coarse"]["tflop_per_iteration"] / 0.06)
    assert "target_seconds_per_iteration" not in result["stages"]["edit"]
    assert result["edit_to_fine_ratio"] == pytest.approx(result["stages"]["edit"]["median_seconds_per_iteration"]
                                                         / result["stages"]["fine"]["median_seconds_per_iteration"])
    assert "an edit iteration costs" in printed
    assert [result["stages"][k]["paper_iterations"] for k in STAGES] == [7000, 5000, 5000]
    assert result["projected_paper_run_seconds"] == pytest.approx(
        result["stages"]["coarse"]["projected_paper_seconds"] + result["stages"]["fine"]["projected_paper_seconds"])


def test_profiler_times_nested_sections_exclusively():
    assert profiling.section("x") is profiling.section("y")  # no profiler: the shared no-op
    profiler = profiling.Profiler()
    with profiling.profile(profiler):
        with profiling.section("outer"):
            time.sleep(0.02)
            with profiling.section("inner"):
                time.sleep(0.05)
    assert profiling._active is None
    seconds = profiler.take()
    assert 0.05 <= seconds["inner"] < 0.2
    assert 0.02 <= seconds["outer"] < 0.045  # the inner 0.05 s is not counted twice
    assert profiler.take() == {}


def test_time_steps_splits_each_step_and_skips_the_warmup():
    class Stage:
        def __init__(self):
            self.calls = []

        def step(self, iteration):
            self.calls.append(iteration)
            with profiling.section("work"):
                time.sleep(0.01 if iteration == 0 else 0.02)
            time.sleep(0.01)
            return float(iteration)

    stage, seen, losses = Stage(), [], []
    records = profiling.time_steps(stage, iterations=2, warmup=1, progress=seen.append,
                                   after_step=lambda record, loss: losses.append(loss))
    assert stage.calls == [0, 1, 2] and seen == [1, 2, 3] and len(records) == 2 and losses == [1.0, 2.0]
    for record in records:
        assert 0.02 <= record["work"] < 0.1 and 0.01 <= record["other"] < 0.1
        assert record["work"] + record["other"] == pytest.approx(record["total"])
        assert 0 <= record["cpu_total"] < record["total"]  # sleeping costs no CPU time
    assert profiling.medians([{"a": 1.0}, {"a": 3.0, "b": 2.0}, {"a": 2.0}]) == {"a": 2.0, "b": 0.0}


def test_sd15_random_assembles_the_sd15_architectures():
    """Built on the meta device: the modules exist with their real configurations and cost no memory."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from headsculpt_engine.models.loading import DiffusionModels
    from headsculpt_engine.models.sd15_architecture import (SD15_CONTROLNET, SD15_PARAMETERS_M, SD15_TEXT_ENCODER,
                                                            SD15_UNET, SD15_VAE, parameter_count_millions)
    from headsculpt_engine.models.sd15_random import build_sd15_random_models

    models = build_sd15_random_models(None, "meta", with_ip2p=True)
    assert isinstance(models, DiffusionModels) and models.device.type == "meta" and models.dtype == torch.float32
    assert isinstance(models.unet, UNet2DConditionModel) and isinstance(models.vae, AutoencoderKL)
    assert isinstance(models.text_encoder, CLIPTextModel) and isinstance(models.scheduler, DDPMScheduler)
    for controlnet in (models.face_controlnet, models.ip2p_controlnet):
        assert isinstance(controlnet, ControlNetModel) and controlnet is not models.unet
        assert parameter_count_millions(controlnet) == pytest.approx(SD15_PARAMETERS_M["controlnet"], rel=0.005)
        assert tuple(controlnet.config.block_out_channels) == SD15_CONTROLNET["block_out_channels"]
    assert models.face_controlnet is not models.ip2p_controlnet
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        assert tuple(models.unet.config[key]) == SD15_UNET[key]
    assert models.unet.config.cross_attention_dim == SD15_UNET["cross_attention_dim"] == 768
    assert parameter_count_millions(models.unet) == pytest.approx(SD15_PARAMETERS_M["unet"], rel=0.005)
    assert models.vae.config.scaling_factor == SD15_VAE["scaling_factor"]
    assert models.text_encoder.config.vocab_size == SD15_TEXT_ENCODER["vocab_size"] == 49408
    assert models.text_encoder.config.hidden_size == 768
    assert all(not p.requires_grad for p in models.unet.parameters())
    ids = models.tokenizer(["a DSLR portrait of a man, front view"], padding="max_length", max_length=77,
                           return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and int(ids.max()) < 49408  # valid token ids for SD's text encoder
    # SD 1.5's noise schedule: scaled-linear betas 0.00085 .. 0.012 over 1000 steps.
    assert len(models.alphas_cumprod) == 1000
    assert float(models.alphas_cumprod[-1]) == pytest.approx(0.00466, rel=0.01)
    assert models.config.base == "sd15-random"


def test_generate_refuses_the_random_models(tmp_path, capsys):
    from headsculpt_engine.config import ModelsConfig
    from headsculpt_engine.errors import InputError
    from headsculpt_engine.models.loading import load_diffusion_models

    code = main(["generate", "--prompt", "a man", "--models", "sd15-random", "--preset", "tiny",
                 "--device", "cpu", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "only `headsculpt bench`" in capsys.readouterr().err
    assert not (tmp_path / "run" / "coarse").exists()
    with pytest.raises(InputError, match="random weights"):
        load_diffusion_models(ModelsConfig(base="sd15-random"), "cpu")


def test_compile_flag_compiles_the_networks_in_place():
    """`models.compile` wraps the UNet's, the ControlNet's and the VAE encoder's calls with torch.compile
    (compiled on first call, not here)."""
    from headsculpt_engine.fast_path import fast_path_report
    from headsculpt_engine.config import preset_config
    from headsculpt_engine.models.loading import load_diffusion_models

    cfg = preset_config("tiny").models
    cfg.compile = True
    models = load_diffusion_models(cfg, "cpu")
    report = fast_path_report(models)
    assert report["channels_last"] is False  # channels-last: CUDA only
    assert report["compiled"] == ["face_controlnet", "unet", "vae_encoder"]
    assert type(models.unet).__name__ == "UNet2DConditionModel"


def test_bench_ablate_turns_each_part_of_the_fast_path_off(tmp_path, capsys):
    """`--ablate` times the stage again once per fast-path part, and each variant really runs without
    that part: the checks the bench reads off the models flip."""
    from headsculpt_engine.fast_path import VARIANTS

    out = tmp_path / "ablate.json"
    assert main(["bench", "--models", "tiny", "--device", "cpu", "--stage", "coarse", "--preset", "tiny",
                 "--iters", "2", "--warmup", "0", "--ablate", "--json", str(out)]) == 0
    assert "one part off at a time" in capsys.readouterr().out
    result = json.loads(out.read_text())
    fast = result["stages"]["coarse"]
    assert set(result["ablation"]) == {v.name for v in VARIANTS}  # every variant applies to the coarse stage
    slow = {name: entry["stages"]["coarse"] for name, entry in result["ablation"].items()}
    for name, stage in slow.items():
        assert stage["slowdown"] == pytest.approx(stage["median_seconds_per_iteration"]
                                                  / fast["median_seconds_per_iteration"]), name
    assert fast["unet_calls"] == 2 and slow["sequential_cfg"]["unet_calls"] == 4  # two steps
    assert fast["unet_autograd"] is False and slow["unet_autograd"]["unet_autograd"] is True
    assert fast["attention_processors"]["unet"] == ["AttnProcessor2_0"]
    assert slow["classic_attention"]["attention_processors"]["unet"] == ["AttnProcessor"]
    # Two steps: without the cache the second step encodes the first step's prompts again.
    assert fast["prompts_encoded_again"] == 0 and slow["no_text_cache"]["prompts_encoded_again"] > 0
    assert slow["no_occupancy_skipping"]["evaluated_sample_share"] > fast["evaluated_sample_share"]
    # The variants put everything back: the stages timed after them ran on the fast path again.
    assert result["fast_path"]["attention_processors"]["unet"] == ["AttnProcessor2_0"]


def test_flop_counter_counts_attention_on_the_cpu_as_on_cuda():
    """The fused CPU attention (SDPA) is counted, as PyTorch counts the CUDA kernels: 2 * 2 * B * H * L^2 * D
    forward (Q K^T and the weighted sum of V), like the explicit attention."""
    import torch
    import torch.nn.functional as F

    from headsculpt_engine.bench import flop_counter

    b, h, length, d = 2, 3, 64, 8
    q, k, v = (torch.randn(b, h, length, d, requires_grad=True) for _ in range(3))

    def explicit():
        return torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1) @ v

    counts = {}
    for name, attention in (("sdpa", lambda: F.scaled_dot_product_attention(q, k, v)), ("explicit", explicit)):
        with flop_counter() as counter:
            out = attention()
        forward = counter.get_total_flops()
        with flop_counter() as counter:
            out.sum().backward()
        counts[name] = (forward, counter.get_total_flops())
    unit = b * h * length ** 2 * d
    assert counts["sdpa"][0] == counts["explicit"][0] == 4 * unit
    # Backward: four products of the explicit form; the fused kernel recomputes Q K^T, a fifth.
    assert counts["explicit"][1] == 8 * unit and counts["sdpa"][1] == 10 * unit


def test_cpu_cost_warning_names_the_cheap_settings():
    import torch

    from headsculpt_engine.bench import cpu_cost_warning
    from headsculpt_engine.config import preset_config

    paper, cpu = preset_config("paper"), torch.device("cpu")
    warning = cpu_cost_warning(paper, "sd15-random", cpu)
    assert "SD 1.5" in warning and "4 views" in warning and "--set guidance.resolution=128" in warning
    assert cpu_cost_warning(paper, "tiny", cpu) is None
    assert cpu_cost_warning(paper, "sd15-random", torch.device("cuda")) is None
    small = preset_config("paper")
    small.guidance.resolution = 128
    assert cpu_cost_warning(small, "sd15-random", cpu) is None


def test_the_autograd_variant_puts_back_a_forward_it_found():
    """accelerate's offload hooks replace a module's forward with their own: the variant must leave it."""
    import torch

    from headsculpt_engine.fast_path import unet_under_autograd

    class Models:
        unet = torch.nn.Linear(2, 2)
        face_controlnet = ip2p_controlnet = None

    hooked = Models.unet.forward
    Models.unet.forward = hooked  # as accelerate does: an instance attribute
    with unet_under_autograd(None, Models):
        assert Models.unet(torch.ones(1, 2)).requires_grad
    assert vars(Models.unet)["forward"] is hooked


def test_device_names_resolve_or_fail_plainly():
    import torch

    from headsculpt_engine.devices import resolve_device
    from headsculpt_engine.errors import InputError

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"
    assert resolve_device(None) == resolve_device("auto") == torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="Unknown device 'bogus'"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_bench_refuses_a_bad_device_before_any_work(capsys):
    assert main(["bench", "--models", "tiny", "--device", "bogus", "--preset", "tiny", "--iters", "1"]) == 2
    assert "Unknown device 'bogus'" in capsys.readouterr().err
