"""Scaled weight standardisation: the convolution of De et al. 2022's WRN (``dp_core.models``' ``wrn``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["WSConv2d", "standardize_weight"]

_EPS = 1e-4  # Brock et al.'s floor on fan_in · var(W_o)


def standardize_weight(weight: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Ŵ_o = g_o · (W_o − mean(W_o)) / √(max(fan_in · var(W_o), ε)) for every output channel o."""
    fan_in = weight[0].numel()
    mean = weight.mean(dim=(1, 2, 3), keepdim=True)
    var = weight.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return gain * (weight - mean) * torch.rsqrt(torch.clamp(var * fan_in, min=_EPS))


class WSConv2d(nn.Conv2d):
    """Conv2d with scaled weight standardisation: it convolves with, per output channel o,

        Ŵ_o = g_o · (W_o − mean(W_o)) / √(max(fan_in · var(W_o), ε)),

    a learnable gain g_o (initialised to 1) and ε = 1e-4 (Brock et al. 2021, "Characterizing signal
    propagation to close the performance gap in unnormalized ResNets", Sec. 4; as De et al. 2022 use
    in every convolution of their WRN). Per-sample gradients are taken with respect to W and g, through
    the standardisation. Engines match layers by exact type, so none mistakes this layer for a plain
    Conv2d that convolves with ``weight`` itself: Opacus' hooks and ghost engines have no sampler for
    it and compute its per-sample gradients with ``torch.func``; bk instantiates them w.r.t. Ŵ and pulls
    them back through the standardisation; ExpandedWeights (``ew``) has no rule for it and refuses it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def standardized_weight(self) -> torch.Tensor:
        return standardize_weight(self.weight, self.gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)
