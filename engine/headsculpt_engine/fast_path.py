"""The fast path of an iteration, how to read it off the models, and how to turn each part off.

The parts (docs/benchmarks.md, "Fast path"): one batched UNet + ControlNet call for all
classifier-free-guidance branches, no autograd through the UNet, PyTorch SDPA attention, cached text
embeddings, occupancy-grid skipping in the coarse NeRF (and, on CUDA, channels-last, reduced precision
and optionally `torch.compile`, which are model settings). `headsculpt bench --ablate` times every
stage with the whole fast path, then once per `Variant` with one part off, so each part's gain is a
measured figure and not a belief.

A variant turns its part off either through the run's settings (`overrides`, applied before the
stage is built) or by switching the loaded models or the built stage for the time it is measured
(`switch`, a context manager that puts everything back).
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator

if TYPE_CHECKING:
    from .models.loading import DiffusionModels

Switch = Callable[[Any, "DiffusionModels"], ContextManager[None]]


def networks(models: "DiffusionModels") -> dict[str, Any]:
    """The UNet and the loaded ControlNets, by name."""
    found = {"unet": models.unet, "face_controlnet": models.face_controlnet, "ip2p_controlnet": models.ip2p_controlnet}
    return {name: module for name, module in found.items() if module is not None}


def fast_path_report(models: "DiffusionModels") -> dict[str, Any]:
    """What the fast path looks like on these models (read from the modules, not from the config)."""
    import torch

    return {
        "dtype": str(models.dtype).removeprefix("torch."),
        "attention_processors": {name: sorted({type(p).__name__ for p in module.attn_processors.values()})
                                 for name, module in networks(models).items()},
        "channels_last": models.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last),
        "compiled": sorted(name for name, module in {**networks(models), "vae_encoder": models.vae.encoder}.items()
                           if compiled(module)),
    }


def compiled(module) -> bool:
    """Whether `module.compile()` wrapped the module's call in torch.compile."""
    return getattr(module, "_compiled_call_impl", None) is not None


@contextmanager
def unet_under_autograd(stage, models: "DiffusionModels") -> Iterator[None]:
    """The UNet and ControlNets run with autograd recording, as when the noisy latents keep their path
    to the renders: the prediction is detached afterwards (the gradient is the same), but the graph
    of the UNet's activations is built and held for the step."""
    import torch

    modules = list(networks(models).values())

    def recording(forward):
        def run(sample, *args, **kwargs):
            with torch.enable_grad():
                return forward(sample.detach().requires_grad_(), *args, **kwargs)
        return run

    # An instance attribute shadows the class's forward; one may be there already (accelerate's offload
    # hooks put theirs there), and is put back afterwards.
    previous = {module: vars(module).get("forward") for module in modules}
    for module in modules:
        module.forward = recording(module.forward)
    try:
        yield
    finally:
        for module, forward in previous.items():
            if forward is None:
                del module.forward
            else:
                module.forward = forward


@contextmanager
def text_encoder_every_step(stage, models: "DiffusionModels") -> Iterator[None]:
    """Every prompt is encoded again at every step (no embedding cache)."""
    models.prompts.cache = False
    try:
        yield
    finally:
        models.prompts.cache = True


@contextmanager
def classic_attention(stage, models: "DiffusionModels") -> Iterator[None]:
    """diffusers' `AttnProcessor` (explicit softmax(QK^T)V) instead of PyTorch's fused SDPA."""
    from diffusers.models.attention_processor import AttnProcessor

    saved = {module: module.attn_processors for module in networks(models).values()}
    for module in saved:
        module.set_attn_processor(AttnProcessor())
    try:
        yield
    finally:
        for module, processors in saved.items():
            module.set_attn_processor(processors)


@contextmanager
def every_cell_occupied(stage, models: "DiffusionModels") -> Iterator[None]:
    """The coarse NeRF evaluates every sample inside the scene cube (no occupancy-grid skipping)."""
    grid = stage.model.grid
    saved, grid.threshold = grid.threshold, -math.inf
    try:
        yield
    finally:
        grid.threshold = saved


@dataclass(frozen=True)
class Variant:
    """The fast path with one part turned off."""

    name: str
    description: str  # what runs instead
    stages: tuple[str, ...] = ("coarse", "fine", "edit")  # where the part is used
    overrides: tuple[str, ...] = ()  # `--set` style settings applied before the stage is built
    switch: Switch | None = None

    def applied(self, stage, models: "DiffusionModels") -> ContextManager[None]:
        return self.switch(stage, models) if self.switch is not None else nullcontext()


VARIANTS = (
    Variant("sequential_cfg", "one UNet + ControlNet call per classifier-free-guidance branch",
            overrides=("guidance.batched_cfg=false",)),
    Variant("unet_autograd", "the UNet and ControlNets recorded by autograd (prediction detached after)",
            switch=unet_under_autograd),
    Variant("classic_attention", "diffusers' AttnProcessor instead of PyTorch SDPA", switch=classic_attention),
    Variant("no_text_cache", "the text encoder runs for every prompt at every step", switch=text_encoder_every_step),
    Variant("no_occupancy_skipping", "the NeRF evaluates every sample in the scene cube", stages=("coarse",),
            switch=every_cell_occupied),
)
