"""Which torch device a run, a stage or the bench uses: one rule, with a plain error for a bad name."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch


def resolve_device(device: "str | torch.device | None") -> "torch.device":
    """None or "auto": CUDA when PyTorch sees a GPU, else the CPU; otherwise the named device, which
    must exist here ("cpu", "cuda", "cuda:1", ...)."""
    import torch

    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise InputError(f"Unknown device {name!r}: use auto, cpu, cuda or cuda:N.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but no CUDA GPU is visible to PyTorch; use --device cpu or auto.")
    return resolved
