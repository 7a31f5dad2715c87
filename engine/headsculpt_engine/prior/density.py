"""The density prior of HeadSculpt Eq. 3: sigma_bar(x) = max(0, softplus^-1(tau(x))),
tau(x) = (1/a) sigmoid(-d(x)/a), with d the signed distance to the prior (negative inside)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEFAULT_SHARPNESS = 0.005  # `a` of Eq. 3
_LOG2 = math.log(2.0)


def softplus_inverse(y: "torch.Tensor") -> "torch.Tensor":
    """softplus^-1(y) = y + log(-expm1(-y)) for y > 0; never evaluates exp(y), so large y cannot overflow."""
    import torch

    return y + torch.log(-torch.expm1(-y))


def density_prior(distance: "torch.Tensor", a: float = DEFAULT_SHARPNESS) -> "torch.Tensor":
    """sigma_bar for signed distances `distance`; finite and >= 0 for every finite or infinite input.

    softplus^-1(tau) is positive only where tau > log 2, so tau is clamped there before the inverse:
    the result is the same after the max(0, .), and the log never sees 0 (tau underflows far outside).
    """
    import torch

    tau = torch.sigmoid(-distance / a) / a
    inverse = softplus_inverse(tau.clamp_min(_LOG2))
    return torch.clamp_min(inverse, 0.0)
