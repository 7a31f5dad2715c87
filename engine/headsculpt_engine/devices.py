"""Which torch device a run, a stage or the bench uses: one rule, with a plain error for a bad name."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
DEVICE_HELP = "auto (CUDA when available, else Apple's MPS, else the CPU), cpu, cuda, cuda:N, mps (untested on hardware)"


def mps_available() -> bool:
    """Apple Silicon's Metal backend, as this PyTorch build sees it (False where torch has no MPS)."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: "str | torch.device | None") -> "torch.device":
    """None or "auto": CUDA when PyTorch sees a GPU, else Apple's MPS when available, else the CPU;
    otherwise the named device, which must exist here ("cpu", "cuda", "cuda:1", "mps", ...).

    MPS is untested on hardware (no Mac is at hand): the engine keeps every CUDA-only call (fp16
    autocast, the gradient scaler, nvdiffrast, tiny-cuda-nn, CPU offload) behind `device.type == "cuda"`,
    so MPS takes the same float32 PyTorch paths as the CPU.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise InputError(f"Unknown device {name!r}: use {DEVICE_NAMES}.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but no CUDA GPU is visible to PyTorch; use --device cpu or auto.")
    if resolved.type == "mps" and not mps_available():
        raise InputError("MPS (Apple Silicon) was asked for but this PyTorch build or machine has none; "
                         "use --device cpu or auto.")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"The device {name!r} is not supported: use {DEVICE_NAMES}.")
    return resolved
