"""The DP-SGD step on Opacus: per-sample gradients, clipping, Gaussian noise, Poisson batches.

We build Opacus' pieces directly instead of calling ``PrivacyEngine.make_private`` because the
engine derives the sampling rate as ``1 / len(data_loader)``, which differs from the
``batch_size / N`` users ask for whenever N is not a multiple of the batch (e.g. 1437 digits
with batches of 64: 1/23 vs 64/1437). Here the sampling rate the sampler uses is exactly the
one the accountant is given.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers import DPOptimizer, DPPerLayerOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

__all__ = ["make_private", "poisson_batches", "per_layer_norms"]


def per_layer_norms(max_grad_norm: float, model: nn.Module) -> list[float]:
    """Split a total bound C over n parameter tensors as C/√n each, so the whole gradient's
    norm is still at most C (the seed CIFAR-10 script's rule)."""
    n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    return [max_grad_norm / math.sqrt(n_tensors)] * n_tensors


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    clipping: str = "flat",
    grad_sample_mode: str = "hooks",
    noise_generator: torch.Generator | None = None,
) -> tuple[nn.Module, DPOptimizer]:
    """Wrap ``model`` to compute per-sample gradients and ``optimizer`` to privatise them.

    Each step: every example's gradient g_i is clipped to norm ≤ C (flat: over all parameters;
    per_layer: C/√n per tensor), the clipped gradients are summed, N(0, σ²C²) is added to every
    coordinate, and the result is divided by the *expected* batch size qN (not the realised
    Poisson batch size, which would depend on the data and break the sensitivity bound).
    """
    private_model = wrap_model(model, grad_sample_mode=grad_sample_mode, batch_first=True, loss_reduction="mean")
    # Poisson sampling assumes each step sees a fresh batch: accumulating per-sample gradients
    # over two forward passes would change the sensitivity, so Opacus forbids it.
    private_model.forbid_grad_accumulation()
    if clipping == "per_layer":
        private_optimizer: DPOptimizer = DPPerLayerOptimizer(
            optimizer, noise_multiplier=noise_multiplier,
            max_grad_norm=per_layer_norms(max_grad_norm, model),
            expected_batch_size=expected_batch_size, loss_reduction="mean", generator=noise_generator,
        )
    else:
        private_optimizer = DPOptimizer(
            optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size, loss_reduction="mean", generator=noise_generator,
        )
    return private_model, private_optimizer


def poisson_batches(
    *,
    num_examples: int,
    sample_rate: float,
    steps: int,
    generator: torch.Generator,
    max_physical_batch_size: int | None = None,
    optimizer: DPOptimizer | None = None,
) -> Iterator[tuple[torch.Tensor, bool]]:
    """Yield ``(indices, ends_logical_batch)`` for ``steps`` Poisson-sampled logical batches.

    Every example joins each batch independently with probability ``sample_rate`` (the sampled
    Gaussian mechanism the accountant assumes). Batches may be empty; they still count as a step
    and still get noise. With ``max_physical_batch_size`` a logical batch is split into chunks
    and ``optimizer`` is told to clip-and-accumulate until the last chunk (virtual batches).
    """
    sampler = UniformWithReplacementSampler(
        num_samples=num_examples, sample_rate=sample_rate, generator=generator, steps=steps
    )
    for indices in sampler:
        batch = torch.as_tensor(indices, dtype=torch.long)
        if max_physical_batch_size is None or optimizer is None or len(batch) <= max_physical_batch_size:
            if optimizer is not None:
                optimizer.signal_skip_step(do_skip=False)
            yield batch, True
            continue
        chunks = torch.tensor_split(batch, math.ceil(len(batch) / max_physical_batch_size))
        for chunk in chunks[:-1]:
            # The optimizer clips and accumulates these chunks without updating (virtual batch),
            # as Opacus' BatchMemoryManager does.
            optimizer.signal_skip_step(do_skip=True)
            yield chunk, False
        optimizer.signal_skip_step(do_skip=False)
        yield chunks[-1], True
