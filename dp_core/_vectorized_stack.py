"""The state of a group that ``dp_core.vectorized`` trains: K configurations as rows of stacked tensors.

Row j of every stacked parameter, buffer and optimizer state is configuration ``running[j]``.
Each configuration keeps what makes it its own trial, whether it is in the stack, waiting for a
place or done: what train() seeds for it (initial weights, sampling stream, noise stream), its
learning-rate schedule and its momentum. ``ConfigStack.train_epoch`` takes one epoch of DP-SGD steps
for all rows, each as Opacus' ``DPOptimizer`` and ``torch.optim.SGD`` would take it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from torch import nn
from torch.func import vmap

from dp_core._vectorized_clipping import (
    Tensors,
    clipped_sums,
    clipping_for,
    logits_function,
    stack_models,
    stateless_copy,
)
from dp_core.config import TrainConfig
from dp_core.data import DatasetSplits
from dp_core.dpsgd import poisson_batches
from dp_core.models import build_configured_model
from dp_core.noise import gaussian_noise
from dp_core.privacy_plan import PrivacyPlan
from dp_core.train import resolve_device

__all__ = ["ConfigStack"]


class ConfigStack:
    """The configurations training now (``running``), stacked, and every configuration's own state."""

    def __init__(
        self,
        configs: Sequence[TrainConfig],
        plans: Sequence[PrivacyPlan],
        data: DatasetSplits,
        *,
        evaluate_test: bool,
        chunk_bytes: int,
    ) -> None:
        self._configs, self._plans, self._data = configs, plans, data
        self._first = first = configs[0]  # what the group shares (model, data, batch sizes) is read from it
        self._device = device = resolve_device(first.device)
        self._train_size = len(data.train)
        self._chunk_bytes = chunk_bytes
        # Per configuration, what train() seeds: model init, sampling stream, noise stream.
        self._models: list[nn.Module | None] = [None] * len(configs)
        self._models[0] = self._build(0)
        self._sampling_generators = [torch.Generator(device=device).manual_seed(c.seed + 1) for c in configs]
        self._noise_generators = [torch.Generator(device=device).manual_seed(c.seed + 2) for c in configs]
        self._clipping = clipping_for(self._models[0])
        self._logits_of = vmap(logits_function(stateless_copy(self._models[0])), in_dims=(0, 0, None))
        self._optimizer = _StackedSGD(configs, plans, device=device)
        self._train_images, self._train_labels = (t.to(device) for t in data.train.tensors)
        self._eval_splits = {
            "val": tuple(t.to(device) for t in data.validation.tensors) if data.validation is not None else None,
            "test": tuple(t.to(device) for t in data.test.tensors) if evaluate_test else None,
        }
        self._max_grad_norms = torch.tensor([float(c.privacy.max_grad_norm) for c in configs], device=device)
        # As Opacus' DPOptimizer: noise std σ·C (flat clipping: C is the sensitivity), then division by
        # the *expected* batch size qN.
        self._noise_multipliers = [plan.noise_multiplier for plan in plans]
        self._sensitivities = [float(c.privacy.max_grad_norm) for c in configs]
        self._expected_batch_sizes = torch.tensor(
            [plan.sample_rate * self._train_size for plan in plans], device=device
        )
        self.running: list[int] = []  # configs[running[j]] is row j of every stacked tensor
        self._params: Tensors = {}
        self._buffers: Tensors = {}

    def _build(self, k: int) -> nn.Module:
        """Configuration k's model, initialised as train() initialises it."""
        first, data = self._first, self._data
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._configs[k].seed)
            return build_configured_model(first, input_shape=data.input_shape, num_classes=data.num_classes).to(
                self._device
            )

    def model(self, k: int) -> nn.Module:
        """Configuration k's model: as trained so far, or as initialised if it never joined."""
        return self._models[k] or self._build(k)

    def join(self, joining: list[int]) -> None:
        """Add these configurations to the stack, after the running ones, with their initial weights."""
        self._restack(self.running + joining)

    def remove(self, leaving: Collection[int]) -> None:
        """Take these configurations out of the stack, their trained weights copied into their models."""
        with torch.no_grad():
            for row, k in enumerate(self.running):
                if k in leaving:
                    for name, parameter in self._models[k].named_parameters():
                        parameter.copy_(self._params[name][row])
        self._restack([k for k in self.running if k not in leaving])

    def _restack(self, rows: list[int]) -> None:
        """Make ``rows`` (configuration indices) the stack, in this order: rows already in it keep
        their state, new ones join with their freshly initialised models."""
        position = {k: j for j, k in enumerate(self.running)}
        joining = [k for k in rows if k not in position]
        for k in joining:
            self._models[k] = self._models[k] or self._build(k)
        kept = torch.tensor([position[k] for k in rows if k in position], device=self._device, dtype=torch.long)
        fresh_params, fresh_buffers = stack_models([self._models[k] for k in joining]) if joining else ({}, {})
        self._params = _rows_then(self._params, kept, fresh_params)
        self._buffers = _rows_then(self._buffers, kept, fresh_buffers)
        self.running = [k for k in rows if k in position] + joining
        self._optimizer.restack(self.running)

    def train_epoch(self) -> list[bool]:
        """One epoch of DP-SGD steps for every row; whether each row's training loss stayed finite."""
        index = torch.tensor(self.running, device=self._device)
        max_grad_norm, expected_batch_size = self._max_grad_norms[index], self._expected_batch_sizes[index]
        # Only to detect divergence; never reported, as in train().
        loss_sum = torch.zeros(len(self.running), device=self._device)
        # Each configuration's own stream, drawn epoch by epoch exactly as train() draws it.
        shared = self._plans[0]  # the group shares its sampling rate and steps per epoch
        streams = [
            poisson_batches(
                num_examples=self._train_size,
                sample_rate=shared.sample_rate,
                steps=shared.steps_per_epoch,
                generator=self._sampling_generators[k],
            )
            for k in self.running
        ]
        noise_multipliers = [self._noise_multipliers[k] for k in self.running]
        sensitivities = [self._sensitivities[k] for k in self.running]
        noise_generators = [self._noise_generators[k] for k in self.running]
        for batches in zip(*streams):
            indices = [batch for batch, _ in batches]  # without virtual batches every batch ends a step
            summed, batch_loss = clipped_sums(
                self._clipping,
                self._params,
                self._buffers,
                indices,
                self._train_images,
                self._train_labels,
                max_grad_norm=max_grad_norm,
                chunk=self._first.max_physical_batch_size,
                chunk_bytes=self._chunk_bytes,
            )
            loss_sum += batch_loss
            self._optimizer.step(
                self._params,
                {
                    name: (total + _noise(noise_multipliers, sensitivities, total, noise_generators))
                    / _per_config(expected_batch_size, total)
                    for name, total in summed.items()
                },
            )
        return torch.isfinite(loss_sum).tolist()

    def evaluate(self) -> list[dict[str, float]]:
        """Per row, ``{"<split>_loss": .., "<split>_accuracy": ..}`` for each split measured."""
        measured = {
            f"{split}_{what}": values
            for split, tensors in self._eval_splits.items()
            if tensors is not None
            for what, values in zip(
                ("loss", "accuracy"),
                _evaluate(
                    self._logits_of, self._params, self._buffers, *tensors, batch_size=self._first.test_batch_size
                ),
            )
        }
        return [{name: values[row] for name, values in measured.items()} for row in range(len(self.running))]


def _rows_then(stacked: Tensors, rows: torch.Tensor, fresh: Tensors) -> Tensors:
    """The given rows of each stacked tensor, then the fresh rows of the same name."""
    if not stacked:
        return dict(fresh)
    if not fresh:
        return {name: value.index_select(0, rows) for name, value in stacked.items()}
    return {name: torch.cat([value.index_select(0, rows), fresh[name]]) for name, value in stacked.items()}


def _per_config(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a (K,) tensor so that it broadcasts over ``like`` of shape (K, …)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _noise(
    noise_multipliers: list[float], sensitivities: list[float], like: torch.Tensor, generators: list[torch.Generator]
) -> torch.Tensor:
    """Each configuration's N(0, (σC)²) per coordinate, stacked: ``gaussian_noise`` row by row.

    Called once per parameter in ``model.parameters()`` order, so every generator is consumed as in
    train(); σC = 0 draws nothing, as there.
    """
    return torch.stack(
        [
            gaussian_noise(noise_multiplier=sigma, sensitivity=bound, like=like[k], generator=generator)
            for k, (sigma, bound, generator) in enumerate(zip(noise_multipliers, sensitivities, generators))
        ]
    )


class _StackedSGD:
    """``torch.optim.SGD`` (no dampening, no Nesterov) on stacked parameters, lr/momentum/wd per config.

    d = g + wd·θ;  b = d on the first step, then b = μ·b + d;  θ ← θ − lr·b  (torch's rule; with
    μ = 0 the buffer is exactly d). A configuration joins the stack with a zero buffer, so that
    μ·0 + d gives it exactly d on its first step. Learning rates come from a real
    ``CosineAnnealingLR`` per configuration (T_max = plan.max_steps, as in train()), so the
    schedule's floats are torch's.
    """

    def __init__(self, configs: Sequence[TrainConfig], plans: Sequence[PrivacyPlan], *, device: torch.device) -> None:
        self._device = device
        self._all_momentum = torch.tensor([c.optimizer.momentum for c in configs], device=device)
        self._all_weight_decay = torch.tensor([c.optimizer.weight_decay for c in configs], device=device)
        self._uses_momentum = any(c.optimizer.momentum != 0 for c in configs)
        self._uses_weight_decay = any(c.optimizer.weight_decay != 0 for c in configs)
        self._all_lr_holders = [
            torch.optim.SGD([torch.zeros(0, requires_grad=True)], lr=c.optimizer.lr) for c in configs
        ]
        self._all_schedulers = [
            torch.optim.lr_scheduler.CosineAnnealingLR(holder, T_max=plan.max_steps)
            if config.optimizer.lr_schedule == "cos"
            else None
            for holder, config, plan in zip(self._all_lr_holders, configs, plans)
        ]
        self._rows: list[int] = []  # configuration index of each stacked row
        self._buffers: Tensors = {}
        self.restack([])

    def restack(self, rows: list[int]) -> None:
        """Go on with these configurations (indices into the constructor's), in this order; those
        already stacked keep their momentum buffers, new ones start with zero buffers."""
        index = torch.tensor(rows, device=self._device, dtype=torch.long)
        position = {k: j for j, k in enumerate(self._rows)}
        # Row len(self._rows) of the padded buffer is the zero row that joining configurations take.
        source = torch.tensor([position.get(k, len(self._rows)) for k in rows], device=self._device, dtype=torch.long)
        self._buffers = {
            name: torch.cat([buffer, buffer.new_zeros((1, *buffer.shape[1:]))]).index_select(0, source)
            for name, buffer in self._buffers.items()
        }
        self._rows = list(rows)
        self._momentum, self._weight_decay = self._all_momentum[index], self._all_weight_decay[index]
        self._lr_holders = [self._all_lr_holders[k] for k in rows]
        self._schedulers = [self._all_schedulers[k] for k in rows]
        self._lr = self._current_lr()

    def _current_lr(self) -> torch.Tensor:
        return torch.tensor([h.param_groups[0]["lr"] for h in self._lr_holders], device=self._device)

    @torch.no_grad()
    def step(self, params: Tensors, gradients: Tensors) -> None:
        for name, theta in params.items():
            direction = gradients[name]
            if self._uses_weight_decay:
                direction = direction + _per_config(self._weight_decay, theta) * theta
            if self._uses_momentum:
                buffer = self._buffers.get(name)
                if buffer is None:
                    buffer = self._buffers[name] = direction.clone()
                else:
                    buffer.mul_(_per_config(self._momentum, buffer)).add_(direction)
                direction = buffer
            theta.sub_(_per_config(self._lr, theta) * direction)
        if any(self._schedulers):
            for holder in self._lr_holders:
                holder.step()  # a no-op (no gradients) that keeps the scheduler from warning about order
            for scheduler in self._schedulers:
                if scheduler is not None:
                    scheduler.step()
            self._lr = self._current_lr()


@torch.no_grad()
def _evaluate(
    logits_of: Callable[[Tensors, Tensors, torch.Tensor], torch.Tensor],
    params: Tensors,
    buffers: Tensors,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
) -> tuple[list[float], list[float]]:
    """Mean cross-entropy and accuracy per configuration, with one device sync at the end."""
    group = next(iter(params.values())).shape[0]
    loss_sum = torch.zeros(group, device=images.device)
    correct = torch.zeros(group, device=images.device, dtype=torch.long)
    for start in range(0, len(images), batch_size):
        logits = logits_of(params, buffers, images[start : start + batch_size])  # K × b × classes
        target = labels[start : start + batch_size].expand(group, -1)
        loss_sum += nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(dim=1)
        correct += (logits.argmax(dim=2) == target).sum(dim=1)
    # Divided as Python floats, as train()'s evaluate() divides them.
    return [s / len(images) for s in loss_sum.tolist()], [c / len(images) for c in correct.tolist()]
