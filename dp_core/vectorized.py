"""Train several DP-SGD configurations of one small model at once, each as if trained alone.

A sweep's trials often differ only in numbers: clipping bound C, noise multiplier σ, learning
rate, momentum, weight decay, seed. ``train_vectorized(configs)`` stacks their parameters along a
leading config axis (``torch.func.stack_module_state``) and takes every step for all of them with
one ``vmap`` over configurations, so K trials run as one unit of work and report as K trials.

Each configuration keeps what makes it its own trial: its initial weights (seeded as ``train``
seeds them), its Poisson sampling stream, its noise stream, its privacy plan and its reports. Its
results equal ``train(config)``'s up to floating-point rounding: the same examples are drawn at
every step, the same Gaussian noise is added (bit for bit: the generator calls Opacus makes), and
clipping, scaling and the SGD update follow Opacus' ``DPOptimizer`` and ``torch.optim.SGD``
formula for formula. Only the order in which floats are summed differs.

``can_vectorize(configs)`` says whether a group can be trained this way, and if not, why.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from dp_core.config import ConfigError, TrainConfig
from dp_core.data import DatasetSplits, canonical_train_size, load_data
from dp_core.dpsgd import poisson_batches
from dp_core.models import build_model
from dp_core.plan import PrivacyPlan, plan_privacy
from dp_core.train import (
    EpochReport,
    StopTraining,
    TrainingDiverged,
    TrainResult,
    _check_plan,  # the rule train() applies to a pre-computed plan
    resolve_device,
)

__all__ = ["ConfigsDiverged", "can_vectorize", "group_signature", "train_vectorized"]

Tensors = dict[str, torch.Tensor]

# Input shapes by dataset, to build the model before any data is loaded (a sweep groups trials
# while planning). Only the shape matters: it decides which layers the zoo builds.
_INPUT_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
_NUM_CLASSES = 10

# Materialised per-example gradients are computed in chunks of at most this many bytes. glibc
# returns blocks above 32 MiB to the OS when freed, so a larger tensor page-faults anew on every
# step (on the 2-core CPU box: 40 MB allocated and filled in 62 ms, 16 MB in 0.8 ms).
_CHUNK_BYTES = 16 * 2**20

# What every configuration of a group must share: the model's shape, the data, the steps.
_SHARED: tuple[tuple[str, Callable[[TrainConfig], Any]], ...] = (
    ("dataset", lambda c: c.data.dataset), ("data_root", lambda c: c.data.data_root),
    ("validation_fraction", lambda c: c.data.validation_fraction),
    ("model", lambda c: c.model.model), ("gn_groups", lambda c: c.model.gn_groups),
    ("epochs", lambda c: c.epochs), ("delta", lambda c: c.privacy.delta),
    ("accountant", lambda c: c.privacy.accountant), ("max_physical_batch_size", lambda c: c.max_physical_batch_size),
    ("device", lambda c: c.device), ("test_batch_size", lambda c: c.test_batch_size),
)

# Modules that draw random numbers in training mode, named in the refusal. Other torch randomness
# is caught by the trial step in _model_problem: vmap refuses random operations.
_RANDOM_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
                   nn.RReLU)


class ConfigsDiverged(TrainingDiverged):
    """The loss of the configurations at ``config_indices`` became NaN or infinite. As in ``train``,
    the run stops; the others give the same results when rerun without them, vectorised or alone."""

    def __init__(self, message: str, *, config_indices: tuple[int, ...]) -> None:
        super().__init__(message)
        self.config_indices = config_indices


# ---------------------------------------------------------------------------------------------- grouping


def can_vectorize(
    configs: Sequence[TrainConfig], *, data: DatasetSplits | None = None, plans: Sequence[PrivacyPlan] | None = None,
) -> str | None:
    """``None`` if ``configs`` can be trained together by ``train_vectorized``, else the reason.

    They must share dataset, model, epochs, sampling rate (batch_size / N), δ, accountant, device
    and batch sizes; each must be private, with SGD and flat clipping; the model must have no
    randomness in its forward pass (dropout) and run under ``torch.func.vmap``; and none may stop
    early at its ``epsilon_budget`` (a group trains in lockstep). N and the input shape come from
    ``data`` when given, else from the dataset's name. A config invalid for the dataset (δ ≥ 1/N)
    with an ``epsilon_budget`` raises ConfigError, as planning it would. ``plans`` (one per config,
    as ``train_vectorized`` takes them) saves planning them again.
    """
    reason = _structural_reason(configs, data)
    if reason is not None:
        return reason
    if plans is not None:
        return _budget_reason(dict(enumerate(plans)))
    train_size = len(data.train) if data is not None else _train_size(configs[0])
    return _budget_reason({i: plan_privacy(c, train_size=train_size) for i, c in enumerate(configs)
                           if c.privacy.epsilon_budget is not None})


def _train_size(config: TrainConfig) -> int:
    return canonical_train_size(config.data.dataset, validation_fraction=config.data.validation_fraction)


def group_signature(config: TrainConfig, *, train_size: int) -> tuple[Any, ...]:
    """Configurations with equal signatures agree on everything a group must share and on every
    per-configuration condition of ``can_vectorize`` (private, SGD, flat clipping), so one of them
    answers ``can_vectorize`` for all (up to an ε-budget stop, which needs their plans)."""
    return (*(value_of(config) for _, value_of in _SHARED), config.resolved_sample_rate(train_size),
            config.privacy.disable_dp, config.optimizer.optimizer, config.privacy.clipping)


def _structural_reason(configs: Sequence[TrainConfig], data: DatasetSplits | None) -> str | None:
    """Everything ``can_vectorize`` checks except the ε budget, which needs privacy plans."""
    if len(configs) == 0:
        return "Expected at least one configuration, but got none."
    first = configs[0]
    train_size = len(data.train) if data is not None else _train_size(first)
    for key, value_of in (*_SHARED, ("sample_rate", lambda c: c.resolved_sample_rate(train_size))):
        for index, config in enumerate(configs[1:], start=1):
            if value_of(config) != value_of(first):
                return (f"Expected every configuration to share {key}, but got {key}={value_of(first)!r} "
                        f"(config 0) and {key}={value_of(config)!r} (config {index}).")
    for index, config in enumerate(configs):
        if config.privacy.disable_dp:
            return (f"Expected every configuration to be private (the vectorised step is DP-SGD), but got "
                    f"disable_dp=True (config {index}); train it with dp_core.train.train.")
        if config.optimizer.optimizer != "sgd":
            return (f"Expected optimizer='sgd' (the vectorised update is SGD with momentum and weight decay), "
                    f"but got optimizer={config.optimizer.optimizer!r} (config {index}).")
        if config.privacy.clipping != "flat":
            return (f"Expected clipping='flat' (one bound C over all parameters), but got "
                    f"clipping={config.privacy.clipping!r} (config {index}).")
    input_shape = data.input_shape if data is not None else _INPUT_SHAPES.get(first.data.dataset)
    if input_shape is None:
        return f"Expected a dataset of known input shape, but got dataset={first.data.dataset!r}; pass data=."
    num_classes = data.num_classes if data is not None else _NUM_CLASSES
    return _model_problem(first, input_shape=input_shape, num_classes=num_classes)


def _model_problem(config: TrainConfig, *, input_shape: tuple[int, int, int], num_classes: int) -> str | None:
    """Build the model and take a vectorised clipping step on two dummy examples."""
    name = config.model.model
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        try:
            model = build_model(name, input_shape=input_shape, num_classes=num_classes,
                                gn_groups=config.model.gn_groups)
        except ConfigError as error:
            return f"Expected a model that builds for this dataset, but building model={name!r} failed: {error}"
        random = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, _RANDOM_MODULES)]
        if random:
            return (f"Expected a model without randomness in its forward pass (each configuration would need "
                    f"its own dropout stream), but got model={name!r} with {', '.join(random)}.")
        params, buffers = _stack([model])
        images, labels = torch.zeros(1, 2, *input_shape), torch.zeros(1, 2, dtype=torch.long)
        try:
            _clipping_for(model).clip(params, buffers, images, labels, torch.ones(1, 2), torch.ones(1))
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:  # e.g. vmap refuses random ops
            return (f"Expected a model the vectorised step can run (under torch.func.vmap; an all-nn.Linear "
                    f"model on (batch, features) inputs), but model={name!r} failed with {type(error).__name__}: "
                    f"{error}")
    return None


def _budget_reason(plans: dict[int, PrivacyPlan]) -> str | None:
    for index, plan in plans.items():
        if plan.stops_early:
            return (f"Expected every configuration to train all its planned steps (a group trains in "
                    f"lockstep), but config {index} would stop at its epsilon_budget after "
                    f"{plan.max_steps} of {plan.planned_steps} steps; train it with dp_core.train.train.")
    return None


# ---------------------------------------------------------------------------------------------- training


def train_vectorized(
    configs: Sequence[TrainConfig],
    *,
    on_epoch: Callable[[dict[int, EpochReport]], Collection[int] | None] | None = None,
    data: DatasetSplits | None = None,
    plans: Sequence[PrivacyPlan] | None = None,
    width: int | None = None,
    evaluate_test: bool = True,
) -> list[TrainResult]:
    """Train ``configs`` together; return one ``TrainResult`` per configuration, in order.

    Each result equals ``train(config)``'s up to floating-point rounding. At most ``width``
    configurations (default: all) train at once; the others wait in order, and each takes the
    place of one that stopped, so the stack stays full while its configurations are pruned at
    different epochs. A configuration's epochs are its own, counted from when it joined; since
    its streams are its own too, when it joins changes nothing in its results.

    ``on_epoch(reports)`` gets ``{index into configs: report}`` for every configuration that
    has just finished an epoch (``report.epoch`` says which of its own); it may return indices
    to stop there (e.g. pruned by a scheduler): they keep their results so far
    (``stopped_early=True``) and the others go on exactly as before. ``StopTraining`` raised
    from it ends all; configurations that had not started keep no reports. ``data`` and
    ``plans`` may be passed pre-loaded and pre-computed, as for ``train``. A report's
    ``train_seconds`` and ``eval_seconds`` are the stack's time divided by its size, so a sweep
    summing them counts the machine time used. Raises ConfigError if the configurations cannot
    be trained together (``can_vectorize``), and ConfigsDiverged (a TrainingDiverged) naming
    those whose loss became NaN or infinite. Evaluation is ``train``'s: the validation split if
    there is one, the test split unless ``evaluate_test`` is false.
    """
    configs = list(configs)
    if width is not None and width < 1:
        raise ValueError(f"Expected width >= 1, but got width={width}.")
    if configs and data is None:
        data = load_data(configs[0].data)
    reason = _structural_reason(configs, data)
    if reason is None:
        assert data is not None
        train_size = len(data.train)
        if plans is None:
            plans = [plan_privacy(config, train_size=train_size) for config in configs]
        elif len(plans) != len(configs):
            raise ConfigError(f"Expected one plan per configuration, but got {len(plans)} plans for "
                              f"{len(configs)} configurations.")
        for plan, config in zip(plans, configs):
            _check_plan(plan, config, train_size=train_size)
        reason = _budget_reason(dict(enumerate(plans)))
    if reason is not None:
        raise ConfigError(f"Cannot train these configurations together: {reason}")
    group, first, device = len(configs), configs[0], resolve_device(configs[0].device)
    width = group if width is None else width

    def build(k: int) -> nn.Module:
        """Configuration k's model, initialised as train() initialises it."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(configs[k].seed)
            return build_model(first.model.model, input_shape=data.input_shape, num_classes=data.num_classes,
                               gn_groups=first.model.gn_groups).to(device)

    # Per configuration, what train() seeds: model init, sampling stream, noise stream.
    models: list[nn.Module | None] = [None] * group
    models[0] = build(0)
    sampling_generators = [torch.Generator().manual_seed(c.seed + 1) for c in configs]
    noise_generators = [torch.Generator(device=device).manual_seed(c.seed + 2) for c in configs]
    clipping = _clipping_for(models[0])
    logits_of = vmap(_logits_of(_stateless(models[0])), in_dims=(0, 0, None))
    optimizer = _StackedSGD(configs, plans, device=device)
    train_images, train_labels = (t.to(device) for t in data.train.tensors)
    eval_splits = {
        "val": tuple(t.to(device) for t in data.validation.tensors) if data.validation is not None else None,
        "test": tuple(t.to(device) for t in data.test.tensors) if evaluate_test else None,
    }
    all_max_grad_norms = torch.tensor([float(c.privacy.max_grad_norm) for c in configs], device=device)
    # Opacus' DPOptimizer: noise std σ·C, then division by the *expected* batch size qN.
    noise_stds = [plan.noise_multiplier * config.privacy.max_grad_norm for plan, config in zip(plans, configs)]
    all_expected_batch_sizes = torch.tensor([plan.sample_rate * train_size for plan in plans], device=device)

    reports: list[list[EpochReport]] = [[] for _ in configs]
    stopped = [False] * group
    waiting = list(range(group))  # not started yet, in order
    running: list[int] = []  # configs[running[j]] is row j of every stacked tensor
    params: Tensors = {}
    buffers: Tensors = {}

    def restack(rows: list[int]) -> None:
        """Make ``rows`` (configuration indices) the stack, in this order: rows already in it keep
        their state, new ones join with their freshly initialised models."""
        nonlocal params, buffers, running
        position = {k: j for j, k in enumerate(running)}
        joining = [k for k in rows if k not in position]
        for k in joining:
            models[k] = models[k] or build(k)
        kept = torch.tensor([position[k] for k in rows if k in position], device=device, dtype=torch.long)
        fresh_params, fresh_buffers = _stack([models[k] for k in joining]) if joining else ({}, {})
        params = _rows_then(params, kept, fresh_params)
        buffers = _rows_then(buffers, kept, fresh_buffers)
        running = [k for k in rows if k in position] + joining
        optimizer.restack(running)

    def finish(rows: list[int]) -> None:
        """Copy the trained weights of these rows back into their configurations' models."""
        with torch.no_grad():
            for row in rows:
                for name, parameter in models[running[row]].named_parameters():
                    parameter.copy_(params[name][row])

    while running or waiting:
        joining, waiting = waiting[:width - len(running)], waiting[width - len(running):]
        if joining:
            restack(running + joining)
        index = torch.tensor(running, device=device)
        max_grad_norm, expected_batch_size = all_max_grad_norms[index], all_expected_batch_sizes[index]
        started = time.perf_counter()
        size = len(running)
        loss_sum = torch.zeros(size, device=device)  # only to detect divergence; never reported, as in train()
        # Each configuration's own stream, drawn epoch by epoch exactly as train() draws it.
        streams = [poisson_batches(num_examples=train_size, sample_rate=plans[0].sample_rate,
                                   steps=plans[0].steps_per_epoch, generator=sampling_generators[k]) for k in running]
        noise_std = [noise_stds[k] for k in running]
        step_generators = [noise_generators[k] for k in running]
        for batches in zip(*streams):
            indices = [batch for batch, _ in batches]  # without virtual batches every batch ends a step
            summed, batch_loss = _clipped_sums(clipping, params, buffers, indices, train_images, train_labels,
                                               max_grad_norm=max_grad_norm, chunk=first.max_physical_batch_size)
            loss_sum += batch_loss
            optimizer.step(params, {
                name: (total + _noise(noise_std, total, step_generators)) / _per_config(expected_batch_size, total)
                for name, total in summed.items()
            })
        train_seconds = (time.perf_counter() - started) / size
        finite = torch.isfinite(loss_sum).tolist()
        diverged = tuple(running[row] for row, ok in enumerate(finite) if not ok)
        if diverged:
            details = "; ".join(f"config {k} (lr={configs[k].optimizer.lr}, "
                                f"max_grad_norm={configs[k].privacy.max_grad_norm})" for k in diverged)
            raise ConfigsDiverged(f"the loss became non-finite in epoch {len(reports[diverged[0]]) + 1} for "
                                  f"{details}; lower the learning rate.", config_indices=diverged)
        started = time.perf_counter()
        measured = {
            f"{split}_{what}": values
            for split, tensors in eval_splits.items() if tensors is not None
            for what, values in zip(("loss", "accuracy"), _evaluate(logits_of, params, buffers, *tensors,
                                                                    batch_size=first.test_batch_size))
        }
        eval_seconds = (time.perf_counter() - started) / size
        epoch_reports = {}
        for row, k in enumerate(running):
            epoch = len(reports[k]) + 1
            steps = epoch * plans[k].steps_per_epoch
            epoch_reports[k] = EpochReport(
                epoch=epoch, steps=steps, **{name: values[row] for name, values in measured.items()}, epsilon=plans[k].epsilon_at(steps), delta=plans[k].delta,
                accountant=plans[k].accountant, noise_multiplier=plans[k].noise_multiplier,
                train_seconds=train_seconds, eval_seconds=eval_seconds,
            )
            reports[k].append(epoch_reports[k])
        to_stop: set[int] = set()
        if on_epoch is not None:
            try:
                to_stop = set(on_epoch(epoch_reports) or ())
            except StopTraining:
                to_stop, waiting = set(running), []
            unknown = to_stop - set(running)
            if unknown:
                raise ValueError(f"on_epoch asked to stop configurations {sorted(unknown)}, which are not training.")
        for k in to_stop:
            stopped[k] = True  # as train() marks a run its hook stopped, even at its last epoch
        leaving = to_stop | {k for k in running if len(reports[k]) >= configs[k].epochs}
        if leaving:
            finish([row for row, k in enumerate(running) if k in leaving])
            restack([k for k in running if k not in leaving])

    return [
        TrainResult(config=config.replace(noise_multiplier=plan.noise_multiplier), plan=plan,
                    reports=tuple(own), stopped_early=stop or not own, model=model or build(k))
        for k, (config, plan, own, model, stop) in enumerate(zip(configs, plans, reports, models, stopped))
    ]


def _rows_then(stacked: Tensors, rows: torch.Tensor, fresh: Tensors) -> Tensors:
    """The given rows of each stacked tensor, then the fresh rows of the same name."""
    if not stacked:
        return dict(fresh)
    if not fresh:
        return {name: value.index_select(0, rows) for name, value in stacked.items()}
    return {name: torch.cat([value.index_select(0, rows), fresh[name]]) for name, value in stacked.items()}


# ---------------------------------------------------------------------------------------------- clipping


def _stack(models: list[nn.Module]) -> tuple[Tensors, Tensors]:
    """Parameters and buffers of ``models`` stacked along a new leading config axis, detached."""
    params, buffers = stack_module_state(models)
    return {n: p.detach() for n, p in params.items()}, {n: b.detach() for n, b in buffers.items()}


def _stateless(model: nn.Module) -> nn.Module:
    """A weightless copy of ``model`` (on the meta device) to call with stacked weights."""
    return copy.deepcopy(model).to("meta")


def _logits_of(model: nn.Module) -> Callable[[Tensors, Tensors, torch.Tensor], torch.Tensor]:
    return lambda params, buffers, images: functional_call(model, (params, buffers), (images,))


def _per_config(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a (K,) tensor so that it broadcasts over ``like`` of shape (K, …)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _clip_factors(norms: torch.Tensor, max_grad_norm: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Opacus' flat factor min(1, C / (‖g_i‖ + 1e-6)), times each example's weight (0: padding).

    Opacus writes C / (norm + 1e-6), which torch evaluates as reciprocal() * C; so do we.
    """
    return ((norms + 1e-6).reciprocal() * max_grad_norm[:, None]).clamp(max=1.0) * weight


# (params K×…, buffers K×…, images K×b×…, labels K×b, weights K×b, max_grad_norm K)
#     -> ({parameter name: Σ_i w_i clip_C(g_i), K×…}, losses K×b)
ClipChunk = Callable[[Tensors, Tensors, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                     tuple[Tensors, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class _Clipping:
    clip: ClipChunk
    bytes_per_example: int  # memory held per example and configuration; 0 if negligible


def _clipping_for(model: nn.Module) -> _Clipping:
    """Ghost clipping when every parameter belongs to an ``nn.Linear``, else per-example gradients."""
    in_linear = {f"{name}.{p}".lstrip(".") for name, module in model.named_modules() if type(module) is nn.Linear
                 for p, _ in module.named_parameters(recurse=False)}
    if {name for name, _ in model.named_parameters()} <= in_linear:
        return _Clipping(_ghost_clipping(model), bytes_per_example=0)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return _Clipping(_per_example_clipping(model), bytes_per_example=size)


def _per_example_clipping(model: nn.Module) -> ClipChunk:
    """Clip each example's materialised gradient: ``vmap(vmap(grad(loss of one example)))``.

    The gradient of ONE example's loss: train() takes the batch's mean loss, and Opacus
    (loss_reduction="mean") multiplies its per-sample gradients back by the batch size.
    """
    logits_of = _logits_of(_stateless(model))

    def loss_of_one(params: Tensors, buffers: Tensors, image: torch.Tensor, label: torch.Tensor):
        loss = nn.functional.cross_entropy(logits_of(params, buffers, image.unsqueeze(0)), label.unsqueeze(0))
        return loss, loss.detach()

    gradients = vmap(vmap(grad(loss_of_one, has_aux=True), in_dims=(None, None, 0, 0)), in_dims=(0, 0, 0, 0))

    def clip(params: Tensors, buffers: Tensors, images: torch.Tensor, labels: torch.Tensor,
             weight: torch.Tensor, max_grad_norm: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
        grads, losses = gradients(params, buffers, images, labels)
        # As Opacus: the norm of the per-parameter norms is the norm over all parameters.
        norms = torch.stack([g.flatten(start_dim=2).norm(2, dim=-1) for g in grads.values()], dim=-1).norm(2, dim=-1)
        factor = _clip_factors(norms, max_grad_norm, weight)
        return {name: torch.einsum("kb,kb...->k...", factor, g) for name, g in grads.items()}, losses

    return clip


class _ProbedLinear(nn.Linear):
    """``nn.Linear`` that, while ``probe`` is set, records its input and adds a zero probe to its output.

    The gradient of the batch's summed loss with respect to the probe is, row by row, the gradient
    of each example's own loss with respect to the layer's output (examples do not interact).
    """

    probe: tuple[Tensors, Tensors] | None = None  # (probes to add, inputs recorded), by layer name
    layer_name = ""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        output = super().forward(input)
        if self.probe is None:
            return output
        probes, inputs = self.probe
        if input.dim() != 2 or self.layer_name in inputs:
            raise ValueError(f"Expected layer {self.layer_name!r} to be called once per example on (batch, "
                             f"features), but got input of shape {tuple(input.shape)} or a second call.")
        inputs[self.layer_name] = input
        return output + probes[self.layer_name]


def _ghost_clipping(model: nn.Module) -> ClipChunk:
    """Flat clipping without forming any example's gradient, for models made of ``nn.Linear`` layers.

    For y = W a + b, example i's gradient is g_i a_iᵀ for W and g_i for b, with g_i = ∂loss_i/∂y_i:
    its squared norm is ‖g_i‖²‖a_i‖² + ‖g_i‖², and Σ_i f_i g_i a_iᵀ is one matrix product
    (Goodfellow 2015, "Efficient per-example gradient computations"; the ghost norm of Li et al.
    2022). The same numbers as materialising, up to rounding, without a K×B×out×in tensor: 8x less
    time per step for eight digits MLPs on one CPU thread.
    """
    stateless = _stateless(model)
    layers = {name: m for name, m in stateless.named_modules() if type(m) is nn.Linear}
    for name, layer in layers.items():
        layer.__class__, layer.layer_name = _ProbedLinear, name  # same parameters, same names

    def summed_loss(probes: Tensors, params: Tensors, buffers: Tensors, images: torch.Tensor, labels: torch.Tensor):
        inputs: Tensors = {}
        for layer in layers.values():
            layer.probe = (probes, inputs)
        try:
            logits = functional_call(stateless, (params, buffers), (images,))
        finally:
            for layer in layers.values():
                layer.probe = None
        losses = nn.functional.cross_entropy(logits, labels, reduction="none")
        return losses.sum(), (losses.detach(), inputs)

    output_gradients = vmap(grad(summed_loss, has_aux=True))

    def clip(params: Tensors, buffers: Tensors, images: torch.Tensor, labels: torch.Tensor,
             weight: torch.Tensor, max_grad_norm: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
        probes = {name: images.new_zeros(*labels.shape, layer.out_features) for name, layer in layers.items()}
        outputs, (losses, inputs) = output_gradients(probes, params, buffers, images, labels)
        squared = torch.zeros_like(weight)
        for name, layer in layers.items():
            output_squared = outputs[name].square().sum(dim=-1)
            squared += output_squared * inputs[name].square().sum(dim=-1)
            if layer.bias is not None:
                squared += output_squared
        factor = _clip_factors(squared.sqrt(), max_grad_norm, weight)
        sums: Tensors = {}
        for name, layer in layers.items():
            scaled, prefix = outputs[name] * factor[..., None], f"{name}." if name else ""
            sums[prefix + "weight"] = torch.bmm(scaled.transpose(1, 2), inputs[name])
            if layer.bias is not None:
                sums[prefix + "bias"] = scaled.sum(dim=1)
        return {name: sums[name] for name in params}, losses  # in model.parameters() order

    return clip


def _clipped_sums(
    clipping: _Clipping, params: Tensors, buffers: Tensors, indices: list[torch.Tensor],
    images: torch.Tensor, labels: torch.Tensor, *, max_grad_norm: torch.Tensor, chunk: int | None,
) -> tuple[Tensors, torch.Tensor]:
    """Σ_i clip_C(g_i) over each configuration's batch, as Opacus' ``clip_and_accumulate`` (flat).

    Batches differ in size between configurations: they are padded to the largest with example 0
    at weight 0, so padding adds exactly 0 (its gradients are finite). Returns the sums and each
    configuration's summed training loss.
    """
    device = images.device
    counts = torch.tensor([len(i) for i in indices])
    width = int(counts.max())
    sums, loss = {name: torch.zeros_like(p) for name, p in params.items()}, torch.zeros(len(indices), device=device)
    if width == 0:  # every batch empty: the step releases pure noise
        return sums, loss
    padded = torch.nn.utils.rnn.pad_sequence(list(indices), batch_first=True).to(device)
    weight = (torch.arange(width) < counts[:, None]).to(device=device, dtype=images.dtype)
    step = min(chunk or width, width)  # max_physical_batch_size and _CHUNK_BYTES bound the memory held
    if clipping.bytes_per_example > 0:
        step = max(1, min(step, _CHUNK_BYTES // (len(indices) * clipping.bytes_per_example)))
    for start in range(0, width, step):
        block, mask = padded[:, start:start + step], weight[:, start:start + step]
        chunk_sums, losses = clipping.clip(params, buffers, images[block], labels[block], mask, max_grad_norm)
        for name, total in chunk_sums.items():
            sums[name] += total
        loss += (losses * mask).sum(dim=1)
    return sums, loss


# ---------------------------------------------------------------------------------------------- noise, update, eval


def _noise(noise_std: list[float], like: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """N(0, (σC)²) per coordinate, drawn for each configuration as Opacus' ``_generate_noise`` draws it.

    Called once per parameter in ``model.parameters()`` order, so every generator is consumed as in
    train(); σC = 0 draws nothing, as in Opacus.
    """
    return torch.stack([
        torch.zeros_like(like[k]) if std == 0 else
        torch.normal(mean=0, std=std, size=like[k].shape, device=like.device, generator=generator, dtype=like.dtype)
        for k, (std, generator) in enumerate(zip(noise_std, generators))
    ])


class _StackedSGD:
    """``torch.optim.SGD`` (no dampening, no Nesterov) on stacked parameters, lr/momentum/wd per config.

    d = g + wd·θ;  b = d on the first step, then b = μ·b + d;  θ ← θ − lr·b  (torch's rule; with
    μ = 0 the buffer is exactly d). A configuration joins the stack with a zero buffer, so that
    μ·0 + d gives it exactly d on its first step. Learning rates come from a real
    ``CosineAnnealingLR`` per configuration (T_max = plan.max_steps, as in train()), so the
    schedule's floats are torch's.
    """

    def __init__(self, configs: list[TrainConfig], plans: Sequence[PrivacyPlan], *, device: torch.device) -> None:
        self._device = device
        self._all_momentum = torch.tensor([c.optimizer.momentum for c in configs], device=device)
        self._all_weight_decay = torch.tensor([c.optimizer.weight_decay for c in configs], device=device)
        self._uses_momentum = any(c.optimizer.momentum != 0 for c in configs)
        self._uses_weight_decay = any(c.optimizer.weight_decay != 0 for c in configs)
        self._all_lr_holders = [torch.optim.SGD([torch.zeros(0, requires_grad=True)], lr=c.optimizer.lr)
                                for c in configs]
        self._all_schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(holder, T_max=plan.max_steps)
                                if config.optimizer.lr_schedule == "cos" else None
                                for holder, config, plan in zip(self._all_lr_holders, configs, plans)]
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
        self._buffers = {name: torch.cat([buffer, buffer.new_zeros((1, *buffer.shape[1:]))]).index_select(0, source)
                         for name, buffer in self._buffers.items()}
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
    logits_of: Callable[[Tensors, Tensors, torch.Tensor], torch.Tensor], params: Tensors, buffers: Tensors,
    images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
) -> tuple[list[float], list[float]]:
    """Mean cross-entropy and accuracy per configuration, with one device sync at the end."""
    group = next(iter(params.values())).shape[0]
    loss_sum = torch.zeros(group, device=images.device)
    correct = torch.zeros(group, device=images.device, dtype=torch.long)
    for start in range(0, len(images), batch_size):
        logits = logits_of(params, buffers, images[start:start + batch_size])  # K × b × classes
        target = labels[start:start + batch_size].expand(group, -1)
        loss_sum += nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(dim=1)
        correct += (logits.argmax(dim=2) == target).sum(dim=1)
    # Divided as Python floats, as train()'s evaluate() divides them.
    return [s / len(images) for s in loss_sum.tolist()], [c / len(images) for c in correct.tolist()]
