"""Search spaces: YAML sweep definitions, validated before anything runs.

A search space is a small YAML file (shipped ones live in the ``search_spaces`` package)::

    name: digits_quick              # optional: the file stem; a different name is warned about, the stem wins
    description: one line shown by --list
    fixed: {dataset: digits, model: digits_cnn, epochs: 15, delta: 1.0e-5}
    axes:
      max_grad_norm: [0.5, 1.0, 2.0]                     # a grid list
      lr: {low: 0.2, high: 2.0, log: true, num: 3}       # a range
    epsilon_budget: 8.0
    search: grid                    # grid | optuna
    trials: 24                      # optuna: required; grid: optional cap on the points run
    objective: single               # single | multi
    pruner: asha                    # asha | none
    resources: {cpus: 1, gpus: 0}
    seed: 0                         # optional: a public root seed (a reproducible research run, see below)
    sweep_epsilon_budget: 40.0      # optional, optuna: an RDP filter on the whole sweep (sweeps.privacy.adaptive)
    kind: train                     # train | federated (FedAvg over DP-SGD clients)
    vectorize: auto                 # auto | off | N: configurations trained at once per unit of work
    private_selection: {distribution: poisson, mean: 10}   # optional, grid only: see below
    confirm: {top: 3, seeds: 3}     # the confirmation stage (default); confirm: off skips it

Files are data: they are read with ``yaml.safe_load`` only, nothing named in them is imported
or evaluated. Every check runs in :func:`load_space`, so a typo fails in milliseconds with a
message naming the file, the key, the bad value and what is allowed, instead of after an hour
of trials. The training keys under ``fixed`` and ``axes`` are dp_core's flat ``TrainConfig``
keys, and each trial configuration is validated by ``TrainConfig.from_dict`` itself. With
``kind: federated`` they may also be ``dp_core.federated``'s keys (clients, rounds, local_epochs,
partition, dirichlet_alpha), and each trial is validated by ``dp_core.federated.split_flat``.

``private_selection`` (``distribution: poisson | truncated_negative_binomial``, ``mean``, and for
the latter an optional shape ``eta``, default 1) makes a grid sweep draw its number of trials K
from that distribution and run K grid points drawn uniformly with replacement, so that releasing
the best model has Papernot–Steinke's guarantee (:mod:`sweeps.privacy.selection`). The theorem needs
i.i.d. runs of one mechanism, so it is refused with search: optuna (adaptive), pruner: asha
(runs depend on each other), a trials cap, a seed axis and kind: federated.

Each trial trains with its own seed (model init, Poisson sampling, noise), drawn from the sweep's
root seed and the trial's number (:meth:`SearchSpace.trial_seed`), unless the space sets one itself
(``fixed.seed`` or a ``seed`` axis). Trials that shared one noise stream would not be
independent runs, and the sweep's privacy statement composes its trials as independent
mechanisms (:mod:`sweeps.privacy.selection`). Without ``seed:`` the root seed is a secret the launcher
draws from the operating system's entropy (:mod:`sweeps.privacy.sweep_secret`): DP needs noise that an
adversary cannot regenerate, and anyone who has the space file knows a seed written in it.
``seed:`` (and ``fixed.seed`` or a ``seed`` axis) makes a reproducible research run whose ε holds
only against someone who does not know that seed; :attr:`SearchSpace.public_seed` says so.

Every trial trains on the training split less a validation split (``fixed.validation_fraction``,
default :data:`DEFAULT_VALIDATION_FRACTION`; the sampling rate and ε count only what is trained
on), and reports validation accuracy only: pruning, Optuna and the frontier decide on it, and no
search trial evaluates the test split. ``confirm`` then retrains the ``top`` configurations of
each ε bucket with ``seeds`` fresh seeds each (:mod:`sweeps.results.confirm`); each bucket's is chosen by
mean validation accuracy and reported with its test accuracy, mean ± std over those seeds.

``vectorize`` packs trials that share a model, data and steps into one unit of work trained by
``dp_core.vectorized.train_vectorized`` (up to N configurations at once, a unit holding several
rounds of N that take the places of pruned or finished ones; each still reported, pruned and
logged as its own trial, with the results it would have alone). ``auto`` trains up to
:data:`sweeps.planning.packing.AUTO_PACK_SIZE` at once for the models where that measured faster; ``off``
(or 1) runs one trial per unit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import itertools
import math
import re
import types
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import search_spaces
from dp_core import config as dp_config
from dp_core._validate import ConfigError, require, require_choice, require_positive
from dp_core.federated import FEDERATED_KEYS, KIND, FederatedConfig, split_flat

__all__ = [
    "SPACES_DIR",
    "SEARCH_MODES",
    "OBJECTIVES",
    "PRUNERS",
    "KINDS",
    "SELECTION_DISTRIBUTIONS",
    "Confirmation",
    "DEFAULT_VALIDATION_FRACTION",
    "PrivateSelection",
    "Range",
    "Axis",
    "SearchSpace",
    "list_spaces",
    "load_space",
]

SPACES_DIR: Path = Path(search_spaces.__file__).parent

SEARCH_MODES = ("grid", "optuna")
OBJECTIVES = ("single", "multi")
PRUNERS = ("asha", "none")
KINDS = ("train", "federated")  # what a trial runs: dp_core.train, or dp_core.federated
SELECTION_DISTRIBUTIONS = ("poisson", "truncated_negative_binomial")  # of the trial count K

_TOP_LEVEL_KEYS = (
    "name", "description", "fixed", "axes", "epsilon_budget", "search", "trials", "objective",
    "pruner", "resources", "seed", "kind", "private_selection", "vectorize", "sweep_epsilon_budget", "confirm",
)  # fmt: skip
_CONFIRM_KEYS = ("top", "seeds")
#: The share of the training split a sweep holds out for validation when its space does not say.
DEFAULT_VALIDATION_FRACTION = 0.1
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


# ---- the data ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Range:
    """A numeric interval: Optuna samples it; grid search uses ``num`` points across it."""

    low: float
    high: float
    log: bool = False
    num: int | None = None
    integer: bool = False

    def grid_values(self) -> list[float]:
        """``num`` points from low to high (geometric if ``log``), rounded to 4 significant digits.

        Integer ranges (keys such as batch_size, epochs) give distinct ints; the ends are exact.
        """
        if self.num is None:
            raise ConfigError(
                f"Expected num (an integer >= 1) for a grid over the range [{self.low}, {self.high}], "
                "but got num=None."
            )
        num = self.num
        if num == 1:
            raw = [float(self.low)]
        elif self.log:
            a, b = math.log(self.low), math.log(self.high)
            raw = [math.exp(a + (b - a) * i / (num - 1)) for i in range(num)]
        else:
            raw = [self.low + (self.high - self.low) * i / (num - 1) for i in range(num)]
        if num > 1:
            raw[0], raw[-1] = float(self.low), float(self.high)
        values: list[Any]
        if self.integer:
            values = [int(round(v)) for v in raw]
        else:
            values = [float(f"{v:.4g}") for v in raw]
            values[0] = float(self.low)
            values[-1] = float(self.high) if num > 1 else values[-1]
        return list(dict.fromkeys(values))  # distinct, in order (rounding can merge integer points)


Axis = tuple[Any, ...] | Range  # a grid list is stored as a tuple


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivateSelection:
    """Draw the trial count K ~ ``distribution`` with E[K] = ``mean`` (``eta``: TNB shape, else None)."""

    distribution: str
    mean: float
    eta: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Confirmation:
    """Retrain the ``top`` configurations of each ε bucket with ``seeds`` fresh seeds each."""

    top: int = 3
    seeds: int = 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """One validated search space. ``fixed`` and ``axes`` are read-only mappings in file order."""

    name: str
    description: str
    source: Path
    fixed: Mapping[str, Any]
    axes: Mapping[str, Axis]
    epsilon_budget: float | None
    search: str
    trials: int | None
    objective: str
    pruner: str
    cpus_per_trial: float
    gpus_per_trial: float
    seed: int | None  # the root seed; None until the launcher draws the sweep's secret one
    kind: str = "train"
    private_selection: PrivateSelection | None = None
    vectorize: int | str = "auto"  # "auto" or the most configurations per unit of work (1: off)
    public_seed: bool = False  # the file fixes the trials' randomness (seed:, fixed.seed or a seed axis)
    sweep_epsilon_budget: float | None = None  # optuna: the RDP filter's ε for the whole sweep
    confirm: Confirmation | None = None  # None: no confirmation stage (confirm: off, kind: federated)

    def with_secret_seed(self, root: int) -> SearchSpace:
        """This space with the sweep's secret root seed (a space that sets ``seed:`` keeps its own)."""
        return self if self.seed is not None else dataclasses.replace(self, seed=root)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fixed", types.MappingProxyType(dict(self.fixed)))
        object.__setattr__(self, "axes", types.MappingProxyType(dict(self.axes)))

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType does not pickle; Ray ships the space to workers, so rebuild from dicts.
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        state["fixed"], state["axes"] = dict(self.fixed), dict(self.axes)
        return (_rebuild_space, (state,))

    @property
    def grid_size(self) -> int:
        """Number of points of the full cartesian product (before any ``trials`` cap)."""
        return math.prod(len(values) for values in self._axis_values().values())

    def grid_axis_values(self) -> list[dict[str, Any]]:
        """The grid's points as axis values only (no ``fixed``), in :meth:`grid_points` order.

        Axes vary in file order, the last axis fastest; ranges contribute ``grid_values()``.
        When ``trials`` is set, only the first ``trials`` points in that order are returned.
        """
        axis_values = self._axis_values()
        names = list(axis_values)
        product: Iterator[tuple[Any, ...]] = itertools.product(*axis_values.values())
        if self.trials is not None:
            product = itertools.islice(product, self.trials)
        return [dict(zip(names, combo, strict=True)) for combo in product]

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid point as a full flat config for ``TrainConfig.from_dict`` (see ``trial_config``)."""
        return [self.trial_config(values) for values in self.grid_axis_values()]

    def with_overrides(self, *, search: str | None = None, trials: int | None = None) -> SearchSpace:
        """A copy with the search mode and/or trial count replaced (CLI flags), validated again.

        ``None`` keeps the file's value. Switching to grid needs ``num`` on every range; switching
        to optuna needs a trial count from the file or from ``trials``.
        """
        changed = dataclasses.replace(
            self, search=self.search if search is None else search, trials=self.trials if trials is None else trials,
        )
        _check_search_settings(changed, self.source, override=True)
        _check_trial_configs(changed, self.source)
        return changed

    def trial_config(self, axis_values: Mapping[str, Any], *, number: int | None = None) -> dict[str, Any]:
        """``fixed`` ∪ ``axis_values`` ∪ ``{"epsilon_budget": budget}`` as one flat mapping; for the
        sweep's trial ``number`` (grid index, Optuna trial number), with its own training seed
        (:meth:`trial_seed`) when the space sets none."""
        for key in axis_values:
            if key not in self.axes:
                raise dp_config.unknown_key_error(str(key), tuple(self.axes), where=f"axes of {self.source}")
        merged = {**self.fixed, **axis_values}
        if self.kind == "federated":
            merged["kind"] = KIND
        merged.setdefault("validation_fraction", DEFAULT_VALIDATION_FRACTION)
        if self.epsilon_budget is not None and "epsilon_budget" not in merged:
            merged["epsilon_budget"] = self.epsilon_budget
        if number is not None and "seed" not in merged:
            merged["seed"] = self.trial_seed(number)
        return merged

    def trial_seed(self, number: int) -> int:
        """The training seed of the sweep's trial ``number``: a 62-bit hash of (sweep seed, number),
        so trials draw independent streams (two equal among 10,000 trials: odds ~1e-11) and a
        resumed sweep's trials draw the ones they drew before."""
        if self.seed is None:
            raise ConfigError(f"Expected the sweep's root seed for trial seeds of {self.source}, but it is not drawn yet.")
        words = np.random.SeedSequence([self.seed, number]).generate_state(2, dtype=np.uint32)
        return (int(words[0]) << 30) ^ int(words[1])  # < 2**62: the trainer adds 1 and 2 to it

    def _axis_values(self) -> dict[str, list[Any]]:
        return {
            key: axis.grid_values() if isinstance(axis, Range) else list(axis) for key, axis in self.axes.items()
        }


def _rebuild_space(state: dict[str, Any]) -> SearchSpace:
    return SearchSpace(**state)


# ---- finding and loading ----------------------------------------------------------------------


def list_spaces() -> list[SearchSpace]:
    """Every shipped space (``*.yaml`` in :data:`SPACES_DIR`), validated, sorted by name."""
    return sorted((load_space(str(path)) for path in SPACES_DIR.glob("*.yaml")), key=lambda s: s.name)


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load and validate a shipped space by name (``"digits_quick"``) or a ``.yaml`` file by path."""
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith((".yaml", ".yml"))
    if looks_like_path:
        path = Path(text).expanduser().absolute()  # Ray workers may run elsewhere: keep no cwd-relative path
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ConfigError(f"Search space file {path} {what}. Give a path to a .yaml file or a shipped name.")
    else:
        path = SPACES_DIR / f"{text}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
            close = difflib.get_close_matches(text, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"Unknown search space {text!r}.{hint} Known spaces: {', '.join(known) or '(none)'} "
                f"(in {SPACES_DIR}); or give a path to a .yaml file."
            )
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Could not read search space file {path}: {error}.") from None
    return _parse(_safe_load(source, path), path)


def _safe_load(source: str, path: Path) -> Any:
    try:
        return yaml.safe_load(source)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        detail = getattr(error, "problem", None) or str(error)
        context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context:
            at = f" at line {context_mark.line + 1}, column {context_mark.column + 1}" if context_mark is not None else ""
            detail = f"{detail} ({context}{at})"
        note = ""
        if isinstance(error, yaml.constructor.ConstructorError):
            note = (
                " Search spaces are plain data: tags such as !!python/... are refused and nothing "
                "named in a file is ever imported or run."
            )
        raise ConfigError(f"Malformed YAML in {where}: {detail}.{note}") from None


# ---- validation -------------------------------------------------------------------------------


@contextlib.contextmanager
def _in_file(path: Path) -> Iterator[None]:
    """Re-raise dp_core's ConfigError messages with the file named, as ``from_dict(where=)`` does."""
    try:
        yield
    except ConfigError as error:
        raise ConfigError(f"{error} (in {path})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def _parse(data: Any, path: Path) -> SearchSpace:
    require_here = _require_in(path)

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
            raise ConfigError(
                f"Missing required key {key!r} in {path}. Required keys: {', '.join(_REQUIRED_KEYS)}."
            )

    # The file is the name: sweeps, their MLflow runs and --resume find a space by its file stem.
    name = data.get("name", path.stem)
    require_here(isinstance(name, str) and name != "", key="name", value=name, allowed="to be a non-empty string")
    if name != path.stem:
        warnings.warn(f"Expected name to equal the file name without .yaml ({path.stem!r}), but got name={name!r} "
                      f"in {path}; the space is named {path.stem!r}.", UserWarning, stacklevel=3)
        name = path.stem
    description = data.get("description", "")
    description = "" if description is None else description
    require_here(isinstance(description, str), key="description", value=description, allowed="to be a string")

    search = data["search"]
    kind = data.get("kind", "train")
    with _in_file(path):
        require_choice(kind, key="kind", choices=KINDS)
    known = dp_config.known_keys() if kind == "train" else tuple(sorted({*dp_config.known_keys(), *FEDERATED_KEYS}))
    fixed = _parse_fixed(data["fixed"], path, known)
    axes = _parse_axes(data["axes"], path, known)

    for key in axes:
        if key in fixed:
            raise ConfigError(
                f"Key {key!r} is in both fixed and axes of {path}, with fixed {key}={fixed[key]!r} and "
                f"axes {key}={_describe_axis(axes[key])}. Give it in one place only."
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
    with _in_file(path):
        require_choice(objective, key="objective", choices=OBJECTIVES)
        require_choice(pruner, key="pruner", choices=PRUNERS)

    budget = _coerce(data.get("epsilon_budget"))
    if budget is not None:
        with _in_file(path):
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

    seed = data.get("seed")
    require_here(seed is None or (_is_int(seed) and seed >= 0), key="seed", value=seed,
                 allowed="to be an integer >= 0, or absent (a secret seed drawn for each sweep)")
    public_seed = seed is not None or "seed" in fixed or "seed" in axes
    sweep_budget = _coerce(data.get("sweep_epsilon_budget"))
    if sweep_budget is not None:
        with _in_file(path):
            require_positive(sweep_budget, key="sweep_epsilon_budget")
        sweep_budget = float(sweep_budget)
    private_selection = _parse_private_selection(data.get("private_selection"), path)
    vectorize = data.get("vectorize", "auto")
    if vectorize is False or vectorize == "off":  # YAML reads a bare `off` as False
        vectorize = 1
    require_here(vectorize == "auto" or (_is_int(vectorize) and vectorize >= 1), key="vectorize", value=vectorize,
                 allowed="to be auto, off or an integer >= 1 (configurations trained at once)")

    confirm = _parse_confirm(data.get("confirm", {}), path, kind=kind)
    if confirm is not None and (private_selection is not None or sweep_budget is not None):
        if "confirm" in data:
            why = ("private_selection: its guarantee covers releasing the best of K trials, and the number of "
                   "nominees would tell K" if private_selection is not None else
                   "sweep_epsilon_budget: the RDP filter does not charge the confirmation runs yet")
            raise ConfigError(f"Expected no confirm with {why} (in {path}); write confirm: off.")
        confirm = None
    validation = fixed.get("validation_fraction", DEFAULT_VALIDATION_FRACTION)
    require_here(_is_number(validation) and 0 < validation < 0.5, key="fixed.validation_fraction", value=validation,
                 allowed="in (0, 0.5): a sweep chooses on a validation split held out of training, never on test data")
    space = SearchSpace(
        confirm=confirm, name=name, description=description, source=path, fixed=fixed, axes=axes, epsilon_budget=budget,
        search=search, trials=trials, objective=objective, pruner=pruner,
        cpus_per_trial=cpus, gpus_per_trial=gpus, seed=seed, kind=kind, private_selection=private_selection,
        vectorize=vectorize, public_seed=public_seed, sweep_epsilon_budget=sweep_budget,
    )  # fmt: skip
    _check_search_settings(space, path)
    _check_trial_configs(space, path)
    return space


def _require_in(path: Path) -> Any:
    def check(condition: bool, *, key: str, value: Any, allowed: str) -> None:
        with _in_file(path):
            require(condition, key=key, value=value, allowed=allowed)

    return check


def _describe(present: Mapping[str, Any], fixed: Mapping[str, Any], key: str) -> str:
    value = present[key]
    return repr(value) if key in fixed else _describe_axis(value)


def _describe_axis(axis: Axis) -> str:
    if isinstance(axis, Range):
        parts = [f"low: {axis.low}", f"high: {axis.high}", f"log: {str(axis.log).lower()}"]
        if axis.num is not None:
            parts.append(f"num: {axis.num}")
        return "{" + ", ".join(parts) + "}"
    return repr(list(axis))


def _check_train_keys(section: Any, path: Path, known: tuple[str, ...], *, where: str) -> None:
    for key in section:
        if not isinstance(key, str) or key not in known:
            raise _unknown_train_key(str(key), known, where=f"{where} of {path}")


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
    _require_in(path)(
        isinstance(raw, dict), key="fixed", value=raw,
        allowed="to be a mapping of training keys to values (it may be empty: fixed: {})",
    )
    _check_train_keys(raw, path, known, where="fixed")
    return {key: _coerce(value) for key, value in raw.items()}


def _parse_axes(raw: Any, path: Path, known: tuple[str, ...]) -> dict[str, Axis]:
    _require_in(path)(
        isinstance(raw, dict) and len(raw) > 0, key="axes", value=raw,
        allowed="to be a non-empty mapping of training keys to a list of values or a range {low, high, log, num}",
    )
    _check_train_keys(raw, path, known, where="axes")
    integer_keys = _integer_keys()
    return {
        key: _parse_axis(value, path, key=key, integer=key in integer_keys) for key, value in raw.items()
    }


def _parse_axis(raw: Any, path: Path, *, key: str, integer: bool) -> Axis:
    require_here = _require_in(path)
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
                value is None or isinstance(value, (str, int, float, bool)), key=f"{label}[{i}]", value=value,
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
        for sub in raw:
            if sub not in _RANGE_KEYS:
                raise dp_config.unknown_key_error(str(sub), _RANGE_KEYS, where=f"the range {label} of {path}")
        for sub in ("low", "high"):
            if sub not in raw:
                raise ConfigError(
                    f"Missing {sub!r} in the range {label} of {path} (got {raw!r}). A range needs "
                    "low and high, and optionally log (true/false) and num (grid points)."
                )
        low, high = _coerce(raw["low"]), _coerce(raw["high"])
        kind = "an integer" if integer else "a finite number"
        for sub, value in (("low", low), ("high", high)):
            ok = _is_int(value) if integer else _is_number(value)
            require_here(
                ok, key=f"{label}.{sub}", value=value,
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
            require_here(_is_int(num) and num >= 1, key=f"{label}.num", value=num, allowed="to be an integer >= 1")
        return Range(
            low=low if integer else float(low), high=high if integer else float(high),
            log=log, num=num, integer=integer,
        )

    raise ConfigError(
        f"Expected {label} to be a list of values (e.g. [0.5, 1.0]) or a range mapping "
        f"{{low, high, log, num}}, but got {label}={raw!r} ({type(raw).__name__}) in {path}. "
        f"A single value belongs in fixed."
    )


def _parse_resources(raw: Any, path: Path) -> tuple[float, float]:
    require_here = _require_in(path)
    if raw is None:
        raw = {}
    require_here(
        isinstance(raw, dict), key="resources", value=raw, allowed="to be a mapping such as {cpus: 1, gpus: 0}",
    )
    for key in raw:
        if key not in _RESOURCE_KEYS:
            raise dp_config.unknown_key_error(str(key), _RESOURCE_KEYS, where=f"resources of {path}")
    cpus, gpus = _coerce(raw.get("cpus", 1)), _coerce(raw.get("gpus", 0))
    require_here(_is_number(cpus) and cpus > 0, key="resources.cpus", value=cpus, allowed="to be a number > 0")
    require_here(
        _is_number(gpus) and gpus >= 0, key="resources.gpus", value=gpus,
        allowed="to be a number >= 0 (fractions such as 0.25 share a GPU between trials)",
    )
    return float(cpus), float(gpus)


def _parse_confirm(raw: Any, path: Path, *, kind: str) -> Confirmation | None:
    if raw is False or raw == "off":  # YAML reads a bare `off` as False
        return None
    require_here = _require_in(path)
    require_here(isinstance(raw, dict), key="confirm", value=raw,
                 allowed="to be a mapping {top: N, seeds: R} or off")
    for key in raw:
        if key not in _CONFIRM_KEYS:
            raise dp_config.unknown_key_error(str(key), _CONFIRM_KEYS, where=f"confirm of {path}")
    top, seeds = raw.get("top", 3), raw.get("seeds", 3)
    require_here(_is_int(top) and top >= 1, key="confirm.top", value=top,
                 allowed="to be an integer >= 1 (configurations retrained per ε bucket)")
    require_here(_is_int(seeds) and seeds >= 2, key="confirm.seeds", value=seeds,
                 allowed="to be an integer >= 2 (fresh seeds per configuration: a std needs two)")
    if kind != "train":
        if raw:
            raise ConfigError(f"Expected no confirm with kind: {kind} in {path}: the confirmation stage retrains "
                              "dp_core.train configurations (write confirm: off).")
        return None
    return Confirmation(top=top, seeds=seeds)


def _parse_private_selection(raw: Any, path: Path) -> PrivateSelection | None:
    if raw is None:
        return None
    require_here = _require_in(path)
    require_here(
        isinstance(raw, dict), key="private_selection", value=raw,
        allowed="to be a mapping such as {distribution: poisson, mean: 10}",
    )
    for key in raw:
        if key not in _SELECTION_KEYS:
            raise dp_config.unknown_key_error(str(key), _SELECTION_KEYS, where=f"private_selection of {path}")
    for key in ("distribution", "mean"):
        if key not in raw:
            raise ConfigError(
                f"Missing {key!r} in private_selection of {path} (got {raw!r}). It needs distribution "
                f"({' | '.join(SELECTION_DISTRIBUTIONS)}) and mean, and optionally eta for the negative binomial."
            )
    distribution, mean, eta = raw["distribution"], _coerce(raw["mean"]), _coerce(raw.get("eta"))
    with _in_file(path):
        require_choice(distribution, key="private_selection.distribution", choices=SELECTION_DISTRIBUTIONS)
    require_here(
        _is_number(mean) and mean >= 1, key="private_selection.mean", value=mean,
        allowed="to be a finite number >= 1 (the expected number of trials)",
    )
    if distribution == "poisson":
        require_here(eta is None, key="private_selection.eta", value=eta,
                     allowed="to be absent for distribution: poisson (eta is the negative binomial's shape)")
    elif eta is None:
        eta = 1.0  # the geometric distribution
    else:
        require_here(
            _is_number(eta) and eta >= 0, key="private_selection.eta", value=eta,
            allowed="to be a number >= 0 (0: logarithmic, 1: geometric distribution of the trial count)",
        )
    return PrivateSelection(distribution=distribution, mean=float(mean), eta=None if eta is None else float(eta))


def _check_private_selection(space: SearchSpace, path: Path, source: str) -> None:
    """Papernot–Steinke need K i.i.d. runs of one mechanism: refuse what would break that."""
    if space.private_selection is None:
        return
    why = {
        "search": (space.search != "grid", space.search,
                   "grid (Optuna proposes from earlier results, so its runs are not independent draws)"),
        "pruner": (space.pruner != "none", space.pruner,
                   "none (ASHA stops a run based on other runs' results, so runs are not independent)"),
        "trials": (space.trials is not None, space.trials,
                   "absent (the number of trials is drawn from private_selection's distribution)"),
        "kind": (space.kind != "train", space.kind, "train (a federated run is not one sampled Gaussian mechanism)"),
    }
    for key, (broken, value, allowed) in why.items():
        if broken:
            raise ConfigError(
                f"Expected {key} to be {allowed} with private_selection, but got {key}={value!r}{source} in {path}."
            )
    if "seed" in space.axes:
        raise ConfigError(
            f"Expected no seed axis with private_selection, but got axes.seed={_describe_axis(space.axes['seed'])} "
            f"in {path}: each drawn trial gets its own secret seed."
        )


def _check_search_settings(space: SearchSpace, path: Path, *, override: bool = False) -> None:
    """What the search mode needs: a trial count for optuna, ``num`` on every range for grid."""
    source = " (overridden from the command line)" if override else ""
    with _in_file(path):
        require_choice(space.search, key="search", choices=SEARCH_MODES)
    trials = space.trials
    if trials is not None or space.search == "optuna":
        allowed = (
            "to be an integer >= 1 (required for search: optuna: the number of trials to sample)"
            if space.search == "optuna"
            else "to be an integer >= 1 (for search: grid, a cap on the grid points run) or absent"
        )
        _require_in(path)(_is_int(trials) and trials >= 1, key="trials", value=trials, allowed=allowed + source)
    if space.search == "grid":
        for key, axis in space.axes.items():
            if isinstance(axis, Range) and axis.num is None:
                raise ConfigError(
                    f"Expected axes.{key}.num (an integer >= 1, the number of grid points) for search: grid"
                    f"{source}, but got axes.{key}={_describe_axis(axis)} without num in {path}. Add num, "
                    "give a list of values, or use search: optuna."
                )
    _check_private_selection(space, path, source)
    if space.sweep_epsilon_budget is not None and space.search != "optuna":
        raise ConfigError(
            f"Expected sweep_epsilon_budget only with search: optuna{source}, but got search={space.search!r} in "
            f"{path}: a grid's trials are fixed before any result, so their naive composition is already a valid "
            "bound; the filter is for trials Optuna chooses from earlier results."
        )
    if space.sweep_epsilon_budget is not None and space.kind != "train":
        raise ConfigError(
            f"Expected kind: train with sweep_epsilon_budget, but got kind={space.kind!r} in {path}: a federated "
            "trial is not one sampled Gaussian mechanism with an RDP curve the filter can charge."
        )


def _check_trial_configs(space: SearchSpace, path: Path) -> None:
    """Build a TrainConfig for every trial the space can run (grid), or for each axis' extremes (optuna)."""
    if space.search == "grid":
        names = list(space.axes)
        candidates = [{key: point[key] for key in names} for point in space.grid_points()]
    else:
        base = {key: axis.low if isinstance(axis, Range) else axis[0] for key, axis in space.axes.items()}
        candidates = [base]
        for key, axis in space.axes.items():
            values = (axis.low, axis.high) if isinstance(axis, Range) else axis
            candidates += [{**base, key: value} for value in values if value != base[key]]
    for axis_values in candidates:
        try:
            values = space.trial_config(axis_values)
            if space.kind == "federated":
                split_flat(values, where=str(path))
            else:
                dp_config.TrainConfig.from_dict(values, where=str(path))
        except ConfigError as error:
            shown = ", ".join(f"{key}={value!r}" for key, value in axis_values.items())
            raise ConfigError(f"{error} First failing trial: {shown}.") from None
