"""Parameter averaging: an exponential moving average (EMA) of a model's weights over training.

After the t-th optimizer step (t = 0, 1, ...) every averaged parameter becomes

    avg ← d_t · avg + (1 − d_t) · w,   d_t = min(d, (1 + t) / (10 + t)),

where ``w`` is the parameter just released by DP-SGD and ``d`` is ``ema_decay``. The warm-up
d_t keeps the average from being dominated by the random initialisation in the first steps
(De et al. 2022, "Unlocking high-accuracy differentially private image classification through
scale", Sec. 3.1; jax_privacy's ``ema_coefficient`` schedule).

It costs no privacy: the average is a function of the noisy iterates DP-SGD releases anyway,
and post-processing a differentially private output cannot weaken its guarantee.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["ParameterAverage", "ema_decay_at"]


def ema_decay_at(decay: float, step: int) -> float:
    """d_t = min(d, (1 + t) / (10 + t)): the decay of the update after optimizer step ``step`` (from 0)."""
    return min(decay, (1.0 + step) / (10.0 + step))


class ParameterAverage:
    """An EMA copy of ``model``, updated from the live model after each logical DP-SGD step.

    Build it from the model *before* a per-sample gradient engine wraps it: the copy then carries
    none of the engine's hooks. Its parameters never require gradients. Buffers (none in the zoo:
    GroupNorm keeps no running statistics) are copied from the live model, not averaged: they are
    state, not weights that DP-SGD released.
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"Expected decay in (0, 1), but got decay={decay!r}.")
        self.decay = decay
        self.updates = 0  # t of the next update
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average in ``model``'s current weights (the same architecture as the copy)."""
        decay = ema_decay_at(self.decay, self.updates)
        averaged = list(self.module.parameters())
        live = list(model.parameters())
        if len(averaged) != len(live):
            raise ValueError(f"Expected a model with {len(averaged)} parameters, but got one with {len(live)}.")
        torch._foreach_lerp_(averaged, [p.detach() for p in live], 1.0 - decay)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the averaged weights and the update count (the warm-up's t)."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["decay"] != self.decay:
            raise ValueError(f"Expected a checkpoint of decay={self.decay!r}, but got decay={state['decay']!r}.")
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
