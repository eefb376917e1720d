"""Which DP-SGD configurations ``dp_core.vectorized`` can train together, and if not, why.

A group shares everything that fixes the model's shape, the data and the steps (``_SHARED`` and
the sampling rate); each configuration must be private, with SGD, flat clipping and no ema_decay; the model must
run under ``vmap`` without randomness; and none may stop early at its ε budget (a group trains in
lockstep); and each must train in float32 (``precision`` fp32, or auto, which a pack resolves to
fp32 on any device). ``group_signature`` is the key a sweep groups its trials by while planning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dp_core._vectorized_clipping import clipping_for, stack_models
from dp_core.config import ConfigError, TrainConfig
from dp_core.data import DatasetSplits
from dp_core.dataset_facts import DATASETS, canonical_train_size
from dp_core.dataset_spec import DatasetSpec
from dp_core.models import build_configured_model
from dp_core.own_data import own_dataset
from dp_core.privacy_plan import PrivacyPlan, check_plan, plan_privacy

__all__ = ["can_vectorize", "checked_plans", "group_signature"]

# What every configuration of a group must share: the model's shape, the data, the steps.
_SHARED: tuple[tuple[str, Callable[[TrainConfig], Any]], ...] = (
    ("dataset", lambda c: c.data.dataset),
    ("data_root", lambda c: c.data.data_root),
    ("validation_fraction", lambda c: c.data.validation_fraction),
    ("augmult", lambda c: c.data.augmult),
    ("model", lambda c: c.model.model),
    ("gn_groups", lambda c: c.model.gn_groups),
    ("model_kwargs", lambda c: repr(sorted(c.model.model_kwargs.items()))),
    ("fix_model", lambda c: c.model.fix_model),
    ("code", lambda c: c.code),
    ("epochs", lambda c: c.epochs),
    ("delta", lambda c: c.privacy.delta),
    ("accountant", lambda c: c.privacy.accountant),
    ("max_physical_batch_size", lambda c: c.max_physical_batch_size),
    ("device", lambda c: c.device),
    ("precision", lambda c: c.precision),
    ("test_batch_size", lambda c: c.test_batch_size),
)

# Modules that draw random numbers in training mode, named in the refusal. Other torch randomness
# is caught by the trial step in _model_problem: vmap refuses random operations.
_RANDOM_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.RReLU,
)


def can_vectorize(
    configs: Sequence[TrainConfig],
    *,
    data: DatasetSplits | None = None,
    plans: Sequence[PrivacyPlan] | None = None,
) -> str | None:
    """``None`` if ``configs`` can be trained together by ``train_vectorized``, else the reason.

    They must share dataset, model, epochs, sampling rate (batch_size / N), δ, accountant, device
    and batch sizes; each must be private, with SGD, flat clipping and no parameter averaging
    (``ema_decay``); the model must have no randomness in its forward pass (dropout) and run under
    ``torch.func.vmap``; and none may stop early at its ``epsilon_budget`` (a group trains in
    lockstep). N and the input shape come from ``data`` when given, else from the dataset's name. A
    config invalid for the dataset (δ ≥ 1/N) with an ``epsilon_budget`` raises ConfigError, as
    planning it would. ``plans`` (one per config, as ``train_vectorized`` takes them) saves planning
    them again.
    """
    reason = _structural_reason(configs, data)
    if reason is not None:
        return reason
    if plans is not None:
        return _budget_reason(dict(enumerate(plans)))
    train_size = len(data.train) if data is not None else _train_size(configs[0])
    return _budget_reason(
        {
            i: plan_privacy(c, train_size=train_size)
            for i, c in enumerate(configs)
            if c.privacy.epsilon_budget is not None
        }
    )


def _train_size(config: TrainConfig) -> int:
    return canonical_train_size(config.data.dataset, validation_fraction=config.data.validation_fraction)


def group_signature(config: TrainConfig, *, train_size: int) -> tuple[Any, ...]:
    """Configurations with equal signatures agree on everything a group must share and on every
    per-configuration condition of ``can_vectorize`` (private, SGD, flat clipping, no ema_decay), so one of them
    answers ``can_vectorize`` for all (up to an ε-budget stop, which needs their plans)."""
    return (
        *(value_of(config) for _, value_of in _SHARED),
        config.resolved_sample_rate(train_size),
        config.privacy.disable_dp,
        config.optimizer.optimizer,
        config.privacy.clipping,
        config.optimizer.ema_decay is not None,
    )


def _structural_reason(configs: Sequence[TrainConfig], data: DatasetSplits | None) -> str | None:
    """Everything ``can_vectorize`` checks except the ε budget, which needs privacy plans."""
    if len(configs) == 0:
        return "Expected at least one configuration, but got none."
    first = configs[0]
    train_size = len(data.train) if data is not None else _train_size(first)
    for key, value_of in (*_SHARED, ("sample_rate", lambda c: c.resolved_sample_rate(train_size))):
        for index, config in enumerate(configs[1:], start=1):
            if value_of(config) != value_of(first):
                return (
                    f"Expected every configuration to share {key}, but got {key}={value_of(first)!r} "
                    f"(config 0) and {key}={value_of(config)!r} (config {index})."
                )
    for index, config in enumerate(configs):
        if config.privacy.disable_dp:
            return (
                f"Expected every configuration to be private (the vectorised step is DP-SGD), but got "
                f"disable_dp=True (config {index}); train it with dp_core.train.train."
            )
        if config.optimizer.optimizer != "sgd":
            return (
                f"Expected optimizer='sgd' (the vectorised update is SGD with momentum and weight decay), "
                f"but got optimizer={config.optimizer.optimizer!r} (config {index})."
            )
        if config.data.augmult != 1:
            return (
                f"Expected augmult=1 (the vectorised step has no augmentation views), but got "
                f"augmult={config.data.augmult} (config {index}); train it with dp_core.train.train."
            )
        if config.precision not in ("fp32", "auto"):
            # The stacked step is float32 throughout (auto means fp32 here): lowering it would need the
            # float32 bookkeeping of dp_core.engines inside vmap, which is not written; such trials run alone.
            return (
                f"Expected precision='fp32' or 'auto' (the vectorised step trains in float32), but got "
                f"precision={config.precision!r} (config {index}); train it with dp_core.train.train."
            )
        if config.privacy.clipping != "flat":
            return (
                f"Expected clipping='flat' (one bound C over all parameters), but got "
                f"clipping={config.privacy.clipping!r} (config {index})."
            )
        if config.optimizer.ema_decay is not None:
            return (
                f"Expected ema_decay=None (the vectorised step keeps no parameter average), but got "
                f"ema_decay={config.optimizer.ema_decay!r} (config {index}); train it with dp_core.train.train."
            )
    # Without data, the model is built from the dataset's facts (a sweep groups trials while
    # planning, before any data is loaded): its shape decides which layers the zoo builds.
    # An own dataset has no facts before it is read: this process's copy of it says them.
    if data is None and isinstance(first.data.dataset, DatasetSpec):
        data = own_dataset(first.data.dataset).splits
    facts = DATASETS.get(first.data.dataset) if data is None else None
    input_shape = data.input_shape if data is not None else facts.input_shape
    num_classes = data.num_classes if data is not None else facts.num_classes
    return _model_problem(first, input_shape=input_shape, num_classes=num_classes)


def _model_problem(config: TrainConfig, *, input_shape: tuple[int, ...], num_classes: int) -> str | None:
    """Build the model and take a vectorised clipping step on two dummy examples."""
    name = config.model.model
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        try:
            model = build_configured_model(config, input_shape=input_shape, num_classes=num_classes)
        except ConfigError as error:
            return f"Expected a model that builds for this dataset, but building model={name!r} failed: {error}"
        random = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, _RANDOM_MODULES)]
        if random:
            return (
                f"Expected a model without randomness in its forward pass (each configuration would need "
                f"its own dropout stream), but got model={name!r} with {', '.join(random)}."
            )
        params, buffers = stack_models([model])
        images, labels = torch.zeros(1, 2, *input_shape), torch.zeros(1, 2, dtype=torch.long)
        try:
            clipping_for(model).clip(params, buffers, images, labels, torch.ones(1, 2), torch.ones(1))
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:  # e.g. vmap refuses random ops
            return (
                f"Expected a model the vectorised step can run (under torch.func.vmap; an all-nn.Linear "
                f"model on (batch, features) inputs), but model={name!r} failed with {type(error).__name__}: "
                f"{error}"
            )
    return None


def _budget_reason(plans: dict[int, PrivacyPlan]) -> str | None:
    for index, plan in plans.items():
        if plan.stops_early:
            return (
                f"Expected every configuration to train all its planned steps (a group trains in "
                f"lockstep), but config {index} would stop at its epsilon_budget after "
                f"{plan.max_steps} of {plan.planned_steps} steps; train it with dp_core.train.train."
            )
    return None


def checked_plans(
    configs: Sequence[TrainConfig],
    data: DatasetSplits | None,
    plans: Sequence[PrivacyPlan] | None,
) -> Sequence[PrivacyPlan]:
    """One plan per configuration (``plans`` checked as ``train`` checks a given plan, or computed),
    or ConfigError if the configurations cannot be trained together."""
    reason = _structural_reason(configs, data)
    if reason is None:
        assert data is not None
        train_size = len(data.train)
        if plans is None:
            plans = [plan_privacy(config, train_size=train_size) for config in configs]
        elif len(plans) != len(configs):
            raise ConfigError(
                f"Expected one plan per configuration, but got {len(plans)} plans for {len(configs)} configurations."
            )
        for plan, config in zip(plans, configs):
            check_plan(plan, config, train_size=train_size)
        reason = _budget_reason(dict(enumerate(plans)))
    if reason is not None:
        raise ConfigError(f"Cannot train these configurations together: {reason}")
    return plans
