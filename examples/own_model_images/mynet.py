"""An own model for dpsweep: a small CNN with GroupNorm, built by ``build``.

dpsweep calls ``build(input_shape=(C, H, W), num_classes=K, **model_kwargs)``, with
``model_kwargs`` from the space file (here ``channels``, swept as ``model_kwargs.channels``).
GroupNorm, not BatchNorm: BatchNorm mixes the examples of a batch, which DP-SGD cannot allow.
"""

from __future__ import annotations

import torch.nn as nn


def build(*, input_shape: tuple[int, ...], num_classes: int, channels: int = 16, groups: int = 4) -> nn.Module:
    in_channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.GroupNorm(groups, channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.GroupNorm(groups, 2 * channels),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * channels, num_classes),
    )
