"""Checking a space file's raw YAML values and building a :class:`~sweeps.space.model.SearchSpace` from them.

Each error names the file, the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dp_core import config as dp_config
from dp_core.dataset_spec import DatasetSpec
from dp_core.errors import ConfigError, require_choice, require_positive
from dp_core.federated import FEDERATED_KEYS, FederatedConfig
from dp_core.user_code import is_reference
from sweeps.space.checks import in_file, is_int, is_number, require_in, require_one_device
from sweeps.space.model import (
    DEFAULT_CHECKPOINT_EVERY_MINUTES,
    DEFAULT_VALIDATION_FRACTION,
    KINDS,
    OBJECTIVES,
    PRUNERS,
    SELECTION_DISTRIBUTIONS,
    Axis,
    Confirmation,
    PrivateSelection,
    Range,
    SearchSpace,
    check_search_settings,
    check_trial_configs,
    describe_axis,
)

__all__ = ["parse_space"]

_TOP_LEVEL_KEYS = (
    "name", "description", "fixed", "axes", "epsilon_budget", "search", "trials", "objective",
    "pruner", "resources", "seed", "kind", "private_selection", "vectorize", "sweep_epsilon_budget", "confirm",
    "code", "checkpoint_every_minutes",
)  # fmt: skip
_CONFIRM_KEYS = ("top", "seeds", "baseline", "refit")
_REQUIRED_KEYS = ("fixed", "axes", "search")
_RANGE_KEYS = ("low", "high", "log", "num")
_RESOURCE_KEYS = ("cpus", "gpus")
_SELECTION_KEYS = ("distribution", "mean", "eta")
# Pairs of TrainConfig keys that say the same thing two ways; a space may give only one of each.
_EXCLUSIVE_KEYS = (("noise_multiplier", "target_epsilon"), ("batch_size", "sample_rate"))
# Names people write for TrainConfig keys (Opacus example flags, other libraries) that difflib
# cannot match by spelling: "learning_rate" is far from "lr".
_SYNONYMS = {
    "learning_rate": "lr", "learningrate": "lr", "step_size": "lr",
    "sigma": "noise_multiplier", "noise": "noise_multiplier", "noise_scale": "noise_multiplier",
    "c": "max_grad_norm", "clip": "max_grad_norm", "clipping_norm": "max_grad_norm", "clip_norm": "max_grad_norm",
    "max_norm": "max_grad_norm", "max_per_sample_grad_norm": "max_grad_norm", "l2_norm_clip": "max_grad_norm",
    "epsilon": "target_epsilon", "eps": "target_epsilon", "target_eps": "target_epsilon",
    "batch": "batch_size", "bs": "batch_size", "arch": "model", "architecture": "model",
    "n_epochs": "epochs", "num_epochs": "epochs", "wd": "weight_decay", "optim": "optimizer",
    "schedule": "lr_schedule", "lr_scheduler": "lr_schedule",
}  # fmt: skip
# YAML 1.1 (PyYAML) reads 1e-5 and 1.0e5 as strings: it wants a dot and a signed exponent.
_SCIENTIFIC = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any) -> Any:
    """Read ``1e-5``-style strings as numbers, as YAML 1.2 and every user would."""
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)
    return value


def _integer_keys() -> frozenset[str]:
    """TrainConfig keys typed ``int`` (batch_size, epochs, ...), read from dp_core's dataclasses."""
    classes = (
        dp_config.DataConfig, dp_config.ModelConfig, dp_config.OptimizerConfig,
        dp_config.PrivacyConfig, dp_config.TrainConfig, FederatedConfig,
    )  # fmt: skip
    keys = set()
    for cls in classes:
        for field in dataclasses.fields(cls):
            parts = {part.strip() for part in str(field.type).split("|")}
            if "int" in parts and "float" not in parts:
                keys.add(field.name)
    return frozenset(keys)


def parse_space(data: Any, path: Path) -> SearchSpace:
    """The space a file's parsed YAML ``data`` describes, every check passed; errors name ``path``."""
    require_here = require_in(path)

    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"{type(data).__name__} {data!r}"
        raise ConfigError(
            f"Expected the top level of {path} to be a mapping with keys {', '.join(_TOP_LEVEL_KEYS)} "
            f"(required: {', '.join(_REQUIRED_KEYS)}), but got {got}."
        )
    for key in data:
        if key not in _TOP_LEVEL_KEYS:
            raise dp_config.unknown_key_error(str(key), _TOP_LEVEL_KEYS, where=str(path))
    for key in _REQUIRED_KEYS:
        if key not in data:
            raise ConfigError(f"Missing required key {key!r} in {path}. Required keys: {', '.join(_REQUIRED_KEYS)}.")

    # The file is the name: sweeps, their MLflow runs and --resume find a space by its file stem.
    name = data.get("name", path.stem)
    require_here(isinstance(name, str) and name != "", key="name", value=name, allowed="to be a non-empty string")
    if name != path.stem:  # stacklevel 3: the line that called load_space
        warnings.warn(
            f"Expected name to equal the file name without .yaml ({path.stem!r}), but got name={name!r} "
            f"in {path}; the space is named {path.stem!r}.",
            UserWarning,
            stacklevel=3,
        )
        name = path.stem
    description = data.get("description", "")
    description = "" if description is None else description
    require_here(isinstance(description, str), key="description", value=description, allowed="to be a string")

    search = data["search"]
    kind = data.get("kind", "train")
    with in_file(path):
        require_choice(kind, key="kind", choices=KINDS)
    known = dp_config.known_keys() if kind == "train" else tuple(sorted({*dp_config.known_keys(), *FEDERATED_KEYS}))
    known = tuple(key for key in known if key != "code")  # the space's own top-level key, relative to its file
    fixed = _parse_fixed(data["fixed"], path, known)
    axes = _parse_axes(data["axes"], path, known)
    code = _parse_code(data.get("code"), path, fixed=fixed, axes=axes)

    for key in axes:
        kwarg = dp_config.model_kwarg_name(key)
        if kwarg is not None and isinstance(fixed.get("model_kwargs"), Mapping) and kwarg in fixed["model_kwargs"]:
            raise ConfigError(
                f"Key {kwarg!r} is in both fixed.model_kwargs and axes of {path}, with fixed model_kwargs.{kwarg}="
                f"{fixed['model_kwargs'][kwarg]!r} and axes {key}={describe_axis(axes[key])}. Give it in one place."
            )
        if key in fixed:
            raise ConfigError(
                f"Key {key!r} is in both fixed and axes of {path}, with fixed {key}={fixed[key]!r} and "
                f"axes {key}={describe_axis(axes[key])}. Give it in one place only."
            )
    present = {**fixed, **axes}
    for first, second in _EXCLUSIVE_KEYS:
        if first in present and second in present:
            raise ConfigError(
                f"Expected at most one of {first} and {second} in fixed/axes of {path}, but got both "
                f"({first}={_describe(present, fixed, first)}, {second}={_describe(present, fixed, second)})."
            )

    trials = data.get("trials")

    objective = data.get("objective", "single")
    pruner = data.get("pruner", "none")
    with in_file(path):
        require_choice(objective, key="objective", choices=OBJECTIVES)
        PRUNERS.check(pruner)

    budget = _coerce(data.get("epsilon_budget"))
    if budget is not None:
        with in_file(path):
            require_positive(budget, key="epsilon_budget")
        budget = float(budget)
    for where, section in (("fixed", fixed), ("axes", axes)):
        if "epsilon_budget" in section:
            raise ConfigError(
                f"Expected epsilon_budget at the top level of {path}, but got it in {where} "
                f"({where}.epsilon_budget={_describe(present, fixed, 'epsilon_budget')}). The sweep "
                "skips trials over the budget and every trial stops at it, so it is one value per space."
            )

    cpus, gpus = _parse_resources(data.get("resources"), path)
    if kind != "federated":  # a federated trial splits its GPUs over its clients, one device each
        require_one_device(gpus, where=f"resources.gpus={gpus:g} in {path}")

    seed = data.get("seed")
    require_here(
        seed is None or (is_int(seed) and seed >= 0),
        key="seed",
        value=seed,
        allowed="to be an integer >= 0, or absent (a secret seed drawn for each sweep)",
    )
    public_seed = seed is not None or "seed" in fixed or "seed" in axes
    sweep_budget = _coerce(data.get("sweep_epsilon_budget"))
    if sweep_budget is not None:
        with in_file(path):
            require_positive(sweep_budget, key="sweep_epsilon_budget")
        sweep_budget = float(sweep_budget)
    private_selection = _parse_private_selection(data.get("private_selection"), path)
    checkpoint_every = _coerce(data.get("checkpoint_every_minutes", DEFAULT_CHECKPOINT_EVERY_MINUTES))
    require_here(
        is_number(checkpoint_every) and checkpoint_every > 0,
        key="checkpoint_every_minutes",
        value=checkpoint_every,
        allowed="to be a number of minutes > 0 (a trial also saves after its last epoch)",
    )
    vectorize = data.get("vectorize", "auto")
    if vectorize is False or vectorize == "off":  # YAML reads a bare `off` as False
        vectorize = 1
    require_here(
        vectorize == "auto" or (is_int(vectorize) and vectorize >= 1),
        key="vectorize",
        value=vectorize,
        allowed="to be auto, off or an integer >= 1 (configurations trained at once)",
    )

    confirm = _parse_confirm(data.get("confirm", {}), path, kind=kind)
    if confirm is not None and (private_selection is not None or sweep_budget is not None):
        if "confirm" in data:
            why = (
                "private_selection: its guarantee covers releasing the best of K trials, and the number of "
                "nominees would tell K"
                if private_selection is not None
                else "sweep_epsilon_budget: the RDP filter does not charge the confirmation runs yet"
            )
            raise ConfigError(f"Expected no confirm with {why} (in {path}); write confirm: off.")
        confirm = None
    validation = fixed.get("validation_fraction", DEFAULT_VALIDATION_FRACTION)
    require_here(
        is_number(validation) and 0 < validation < 0.5,
        key="fixed.validation_fraction",
        value=validation,
        allowed="in (0, 0.5): a sweep chooses on a validation split held out of training, never on test data",
    )
    space = SearchSpace(
        confirm=confirm, name=name, description=description, source=path, fixed=fixed, axes=axes, epsilon_budget=budget,
        search=search, trials=trials, objective=objective, pruner=pruner,
        cpus_per_trial=cpus, gpus_per_trial=gpus, seed=seed, kind=kind, private_selection=private_selection,
        vectorize=vectorize, public_seed=public_seed, sweep_epsilon_budget=sweep_budget, code=code,
        checkpoint_every_minutes=float(checkpoint_every),
    )  # fmt: skip
    check_search_settings(space, path)
    check_trial_configs(space, path)
    return space


def _describe(present: Mapping[str, Any], fixed: Mapping[str, Any], key: str) -> str:
    value = present[key]
    return repr(value) if key in fixed else describe_axis(value)


def _check_train_keys(section: Any, path: Path, known: tuple[str, ...], *, where: str) -> None:
    for key in section:
        if key == "code":
            raise ConfigError(
                f"Expected code at the top level of {path} (folders relative to the space file), but got it in "
                f"{where} ({where}.code={section[key]!r})."
            )
        if not isinstance(key, str) or (key not in known and dp_config.model_kwarg_name(key) is None):
            raise _unknown_train_key(str(key), known, where=f"{where} of {path}")


def _names_a_module(fixed: Mapping[str, Any], axes: Mapping[str, Axis]) -> bool:
    """Whether the space names code of the user's: an own model ``module:function``, or a dataset
    with a ``loader``."""
    model_axis = axes.get("model", ())
    models = [fixed.get("model"), *(model_axis if isinstance(model_axis, tuple) else ())]
    dataset = fixed.get("dataset")
    return any(is_reference(model) for model in models) or (isinstance(dataset, Mapping) and "loader" in dataset)


def _parse_code(raw: Any, path: Path, *, fixed: Mapping[str, Any], axes: Mapping[str, Axis]) -> tuple[str, ...]:
    """The folders the space's own modules are imported from, absolute: ``code:`` (relative to the
    space file), or the space file's folder when the space names a module and no ``code:``."""
    if raw is None:
        return (str(path.resolve().parent),) if _names_a_module(fixed, axes) else ()
    require_in(path)(
        isinstance(raw, list) and all(isinstance(folder, str) and folder for folder in raw),
        key="code",
        value=raw,
        allowed="to be a list of folders (relative to the space file) that the space's own modules are imported from",
    )
    folders = []
    for folder in raw:
        where = (path.resolve().parent / folder).resolve()
        if not where.is_dir():
            raise ConfigError(f"Expected code: to list folders, but got {folder!r} in {path}, and {where} is not one.")
        folders.append(str(where))
    return tuple(folders)


def _unknown_train_key(key: str, known: tuple[str, ...], *, where: str) -> ConfigError:
    """dp_core's unknown-key error, with a hint for common synonyms that spelling alone misses."""
    error = dp_config.unknown_key_error(key, known, where=where)
    if key in FEDERATED_KEYS and key not in known:
        return ConfigError(f"{error} {key!r} is a key of federated trials: add `kind: federated` at the top level.")
    synonym = _SYNONYMS.get(key.lower().replace("-", "_"))
    message = str(error)
    if "Did you mean" in message or synonym not in known:
        return error
    head, marker, tail = message.partition(" Known keys: ")
    return ConfigError(f"{head} Did you mean {synonym!r}?{marker}{tail}")


def _parse_fixed(raw: Any, path: Path, known: tuple[str, ...]) -> dict[str, Any]:
    if raw is None:
        raw = {}
    require_in(path)(
        isinstance(raw, dict),
        key="fixed",
        value=raw,
        allowed="to be a mapping of training keys to values (it may be empty: fixed: {})",
    )
    _check_train_keys(raw, path, known, where="fixed")
    fixed = {key: _coerce(value) for key, value in raw.items()}
    if isinstance(fixed.get("dataset"), dict):
        # An own dataset: its paths are relative to the space file, made absolute here, so that every
        # trial's configuration (and best_per_epsilon.json) names the same files wherever it runs.
        with in_file(path):
            fixed["dataset"] = DatasetSpec.from_mapping(fixed["dataset"], base=path.parent).to_mapping()
    return fixed


def _parse_axes(raw: Any, path: Path, known: tuple[str, ...]) -> dict[str, Axis]:
    require_in(path)(
        isinstance(raw, dict) and len(raw) > 0,
        key="axes",
        value=raw,
        allowed="to be a non-empty mapping of training keys to a list of values or a range {low, high, log, num}",
    )
    _check_train_keys(raw, path, known, where="axes")
    if isinstance(raw.get("dataset"), list) and any(isinstance(v, dict) for v in raw["dataset"]):
        raise ConfigError(
            f"Expected the dataset axis of {path} to list zoo names, but got an own dataset (a mapping) in it: "
            "an own dataset goes under fixed (one sweep per own dataset)."
        )
    integer_keys = _integer_keys()
    return {
        key: _parse_axis(value, path, key=key, integer=_is_integer_axis(key, value, integer_keys))
        for key, value in raw.items()
    }


def _is_integer_axis(key: str, raw: Any, integer_keys: frozenset[str]) -> bool:
    """A key typed int, or a builder's keyword argument whose range has integer ends (a width, a depth)."""
    if dp_config.model_kwarg_name(key) is not None:
        return isinstance(raw, dict) and is_int(raw.get("low")) and is_int(raw.get("high"))
    return key in integer_keys


def _check_section_keys(
    raw: Mapping[str, Any], *, known: tuple[str, ...], required: tuple[str, ...], where: str, needs: str
) -> None:
    """Refuse a key of a nested mapping that is not ``known`` ("did you mean"), or a missing ``required`` one."""
    for key in raw:
        if key not in known:
            raise dp_config.unknown_key_error(str(key), known, where=where)
    for key in required:
        if key not in raw:
            raise ConfigError(f"Missing {key!r} in {where} (got {raw!r}). {needs}")


def _parse_axis(raw: Any, path: Path, *, key: str, integer: bool) -> Axis:
    require_here = require_in(path)
    label = f"axes.{key}"
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(
                f"Expected {label} to be a non-empty list of values, but got an empty grid "
                f"({label}=[]) in {path}. Give at least one value, or move the key to fixed."
            )
        values = [_coerce(value) for value in raw]
        for i, value in enumerate(values):
            require_here(
                value is None or isinstance(value, (str, int, float, bool)),
                key=f"{label}[{i}]",
                value=value,
                allowed="to be a single value (a number, string, true/false or null), not a list or mapping",
            )
        for i, value in enumerate(values):
            if any(value == other and type(value) is type(other) for other in values[:i]):
                raise ConfigError(
                    f"Expected the values of {label} to be distinct, but got {value!r} twice "
                    f"({label}={raw!r}) in {path}; a repeated value only repeats trials."
                )
        return tuple(values)

    if isinstance(raw, dict):
        _check_section_keys(
            raw,
            known=_RANGE_KEYS,
            required=("low", "high"),
            where=f"the range {label} of {path}",
            needs="A range needs low and high, and optionally log (true/false) and num (grid points).",
        )
        low, high = _coerce(raw["low"]), _coerce(raw["high"])
        kind = "an integer" if integer else "a finite number"
        for sub, value in (("low", low), ("high", high)):
            ok = is_int(value) if integer else is_number(value)
            require_here(
                ok,
                key=f"{label}.{sub}",
                value=value,
                allowed=f"to be {kind}" + (f" ({key} takes integers)" if integer else ""),
            )
        if not low <= high:
            raise ConfigError(f"`low <= high` must hold, but got (low={low!r}, high={high!r}) for {label} in {path}.")
        log = raw.get("log", False)
        require_here(isinstance(log, bool), key=f"{label}.log", value=log, allowed="to be true or false")
        if log and not low > 0:
            raise ConfigError(
                f"`low > 0` must hold for a log range, but got (low={low!r}, high={high!r}, log=true) "
                f"for {label} in {path}. Use log: false, or a positive low."
            )
        num = raw.get("num")
        if num is not None:
            require_here(is_int(num) and num >= 1, key=f"{label}.num", value=num, allowed="to be an integer >= 1")
        return Range(
            low=low if integer else float(low),
            high=high if integer else float(high),
            log=log,
            num=num,
            integer=integer,
        )

    raise ConfigError(
        f"Expected {label} to be a list of values (e.g. [0.5, 1.0]) or a range mapping "
        f"{{low, high, log, num}}, but got {label}={raw!r} ({type(raw).__name__}) in {path}. "
        f"A single value belongs in fixed."
    )


def _parse_resources(raw: Any, path: Path) -> tuple[float, float]:
    require_here = require_in(path)
    if raw is None:
        raw = {}
    require_here(
        isinstance(raw, dict),
        key="resources",
        value=raw,
        allowed="to be a mapping such as {cpus: 1, gpus: 0}",
    )
    for key in raw:
        if key not in _RESOURCE_KEYS:
            raise dp_config.unknown_key_error(str(key), _RESOURCE_KEYS, where=f"resources of {path}")
    cpus, gpus = _coerce(raw.get("cpus", 1)), _coerce(raw.get("gpus", 0))
    require_here(is_number(cpus) and cpus > 0, key="resources.cpus", value=cpus, allowed="to be a number > 0")
    require_here(
        is_number(gpus) and gpus >= 0,
        key="resources.gpus",
        value=gpus,
        allowed="to be a number >= 0 (fractions such as 0.25 share a GPU between trials)",
    )
    return float(cpus), float(gpus)


def _parse_confirm(raw: Any, path: Path, *, kind: str) -> Confirmation | None:
    if raw is False or raw == "off":  # YAML reads a bare `off` as False
        return None
    require_here = require_in(path)
    require_here(
        isinstance(raw, dict),
        key="confirm",
        value=raw,
        allowed="to be a mapping {top: N, seeds: R, baseline: true, refit: true} or off",
    )
    for key in raw:
        if key not in _CONFIRM_KEYS:
            raise dp_config.unknown_key_error(str(key), _CONFIRM_KEYS, where=f"confirm of {path}")
    top, seeds = raw.get("top", 3), raw.get("seeds", 3)
    baseline, refit = raw.get("baseline", True), raw.get("refit", True)
    require_here(
        is_int(top) and top >= 1,
        key="confirm.top",
        value=top,
        allowed="to be an integer >= 1 (configurations retrained per ε bucket)",
    )
    require_here(
        is_int(seeds) and seeds >= 2,
        key="confirm.seeds",
        value=seeds,
        allowed="to be an integer >= 2 (fresh seeds per configuration: a std needs two)",
    )
    require_here(
        isinstance(baseline, bool),
        key="confirm.baseline",
        value=baseline,
        allowed="to be true (confirm the trainer's defaults beside the search's nominees) or false",
    )
    require_here(
        isinstance(refit, bool),
        key="confirm.refit",
        value=refit,
        allowed="to be true (train each bound's chosen configuration on train + validation to report it) or false",
    )
    if kind != "train":
        if raw:
            raise ConfigError(
                f"Expected no confirm with kind: {kind} in {path}: the confirmation stage retrains "
                "dp_core.train configurations (write confirm: off)."
            )
        return None
    return Confirmation(top=top, seeds=seeds, baseline=baseline, refit=refit)


def _parse_private_selection(raw: Any, path: Path) -> PrivateSelection | None:
    if raw is None:
        return None
    require_here = require_in(path)
    require_here(
        isinstance(raw, dict),
        key="private_selection",
        value=raw,
        allowed="to be a mapping such as {distribution: poisson, mean: 10}",
    )
    _check_section_keys(
        raw,
        known=_SELECTION_KEYS,
        required=("distribution", "mean"),
        where=f"private_selection of {path}",
        needs=f"It needs distribution ({' | '.join(SELECTION_DISTRIBUTIONS)}) and mean, and "
        "optionally eta for the negative binomial.",
    )
    distribution, mean, eta = raw["distribution"], _coerce(raw["mean"]), _coerce(raw.get("eta"))
    with in_file(path):
        require_choice(distribution, key="private_selection.distribution", choices=SELECTION_DISTRIBUTIONS)
    require_here(
        is_number(mean) and mean >= 1,
        key="private_selection.mean",
        value=mean,
        allowed="to be a finite number >= 1 (the expected number of trials)",
    )
    if distribution == "poisson":
        require_here(
            eta is None,
            key="private_selection.eta",
            value=eta,
            allowed="to be absent for distribution: poisson (eta is the negative binomial's shape)",
        )
    elif eta is None:
        eta = 1.0  # the geometric distribution
    else:
        require_here(
            is_number(eta) and eta >= 0,
            key="private_selection.eta",
            value=eta,
            allowed="to be a number >= 0 (0: logarithmic, 1: geometric distribution of the trial count)",
        )
    return PrivateSelection(distribution=distribution, mean=float(mean), eta=None if eta is None else float(eta))
