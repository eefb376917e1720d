"""A validated search space as frozen dataclasses, and the rules that tie its settings together.

The values are checked where they enter (:mod:`sweeps.space.parse` for a file,
:meth:`SearchSpace.with_overrides` for command-line flags), so the dataclasses trust their fields.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dp_core import config as dp_config
from dp_core.errors import ConfigError, require_choice
from dp_core.federated import KIND, split_flat
from dp_core.registry import Registry
from sweeps.space.checks import in_file, is_int, require_in

__all__ = [
    "DEFAULT_CHECKPOINT_EVERY_MINUTES",
    "DEFAULT_VALIDATION_FRACTION",
    "KINDS",
    "OBJECTIVES",
    "PRUNERS",
    "SEARCH_MODES",
    "SELECTION_DISTRIBUTIONS",
    "Axis",
    "Confirmation",
    "PrivateSelection",
    "Range",
    "SearchSpace",
    "candidate_axis_values",
    "check_search_settings",
    "check_trial_configs",
    "describe_axis",
    "rebuild_space",
]

SEARCH_MODES = ("grid", "optuna")
OBJECTIVES = ("single", "multi")
#: pruner name -> its rule (:mod:`sweeps.planning.pruning`), a reference the driver imports: a
#: space names a pruner, the planning layer implements it. ``none`` must mean no pruning at all
#: (private selection needs independent runs).
PRUNERS = Registry("pruner", references=True)
PRUNERS.register("asha", "sweeps.planning.pruning:BandedSuccessiveHalving")
PRUNERS.register("none", "sweeps.planning.pruning:NoPruning")
KINDS = ("train", "federated")  # what a trial runs: dp_core.train, or dp_core.federated
SELECTION_DISTRIBUTIONS = ("poisson", "truncated_negative_binomial")  # of the trial count K
#: The share of the training split a sweep holds out for validation when its space does not say.
DEFAULT_VALIDATION_FRACTION = 0.1
#: How often a trial saves its checkpoint while training, when its space does not say: sized for
#: GPUs, where an epoch takes seconds and saving (and uploading) one per epoch would cost more than
#: the training a dead worker redoes.
DEFAULT_CHECKPOINT_EVERY_MINUTES = 10.0


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
                f"Expected num (an integer >= 1) for a grid over the range [{self.low}, {self.high}], but got num=None."
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
    """Retrain the ``top`` configurations of each ε bucket with ``seeds`` fresh seeds each, and with
    ``baseline`` the trainer's defaults beside them; with ``refit``, train each bucket's chosen one
    ``seeds`` times more on train + validation."""

    top: int = 3
    seeds: int = 3
    baseline: bool = True
    refit: bool = True


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
    # Absolute folders the space's own modules (model: "module:function") are imported from; they
    # travel to Ray's workers (sweeps.driver.user_code) and into every trial's configuration.
    code: tuple[str, ...] = ()
    # How often a trial saves its checkpoint while training (and always after its last epoch): what
    # it would redo if its worker died, against what it uploads to the sweep's storage.
    checkpoint_every_minutes: float = DEFAULT_CHECKPOINT_EVERY_MINUTES

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
        return (rebuild_space, (state,))

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
            self,
            search=self.search if search is None else search,
            trials=self.trials if trials is None else trials,
        )
        check_search_settings(changed, self.source, override=True)
        check_trial_configs(changed, self.source)
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
        if self.code:
            merged["code"] = list(self.code)
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
            raise ConfigError(
                f"Expected the sweep's root seed for trial seeds of {self.source}, but it is not drawn yet."
            )
        words = np.random.SeedSequence([self.seed, number]).generate_state(2, dtype=np.uint32)
        return (int(words[0]) << 30) ^ int(words[1])  # < 2**62: the trainer adds 1 and 2 to it

    def _axis_values(self) -> dict[str, list[Any]]:
        return {key: axis.grid_values() if isinstance(axis, Range) else list(axis) for key, axis in self.axes.items()}


def rebuild_space(state: dict[str, Any]) -> SearchSpace:
    """A SearchSpace from the fields :meth:`SearchSpace.__reduce__` pickled."""
    return SearchSpace(**state)


# Tune state pickled before the rebuild function was public names it so (a --resume).
_rebuild_space = rebuild_space


# ---- the rules between settings ----------------------------------------------------------------
# They live beside SearchSpace because with_overrides applies them again to a built space (the
# command line's --search and --trials); sweeps.space.parse applies them to each loaded one.


def _check_private_selection(space: SearchSpace, path: Path, source: str) -> None:
    """Papernot–Steinke need K i.i.d. runs of one mechanism: refuse what would break that."""
    if space.private_selection is None:
        return
    why = {
        "search": (
            space.search != "grid",
            space.search,
            "grid (Optuna proposes from earlier results, so its runs are not independent draws)",
        ),
        "pruner": (
            space.pruner != "none",
            space.pruner,
            "none (ASHA stops a run based on other runs' results, so runs are not independent)",
        ),
        "trials": (
            space.trials is not None,
            space.trials,
            "absent (the number of trials is drawn from private_selection's distribution)",
        ),
        "kind": (space.kind != "train", space.kind, "train (a federated run is not one sampled Gaussian mechanism)"),
    }
    for key, (broken, value, allowed) in why.items():
        if broken:
            raise ConfigError(
                f"Expected {key} to be {allowed} with private_selection, but got {key}={value!r}{source} in {path}."
            )
    if "seed" in space.axes:
        raise ConfigError(
            f"Expected no seed axis with private_selection, but got axes.seed={describe_axis(space.axes['seed'])} "
            f"in {path}: each drawn trial gets its own secret seed."
        )


def check_search_settings(space: SearchSpace, path: Path, *, override: bool = False) -> None:
    """What the search mode needs: a trial count for optuna, ``num`` on every range for grid."""
    source = " (overridden from the command line)" if override else ""
    with in_file(path):
        require_choice(space.search, key="search", choices=SEARCH_MODES)
    trials = space.trials
    if trials is not None or space.search == "optuna":
        allowed = (
            "to be an integer >= 1 (required for search: optuna: the number of trials to sample)"
            if space.search == "optuna"
            else "to be an integer >= 1 (for search: grid, a cap on the grid points run) or absent"
        )
        require_in(path)(is_int(trials) and trials >= 1, key="trials", value=trials, allowed=allowed + source)
    if space.search == "grid":
        for key, axis in space.axes.items():
            if isinstance(axis, Range) and axis.num is None:
                raise ConfigError(
                    f"Expected axes.{key}.num (an integer >= 1, the number of grid points) for search: grid"
                    f"{source}, but got axes.{key}={describe_axis(axis)} without num in {path}. Add num, "
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


def candidate_axis_values(space: SearchSpace) -> list[dict[str, Any]]:
    """The axis values of every trial a grid space runs, or of each Optuna axis' extremes (one axis
    moved at a time from the first values): what a check of the space's trials builds."""
    if space.search == "grid":
        names = list(space.axes)
        return [{key: point[key] for key in names} for point in space.grid_points()]
    base = {key: axis.low if isinstance(axis, Range) else axis[0] for key, axis in space.axes.items()}
    candidates = [base]
    for key, axis in space.axes.items():
        values = (axis.low, axis.high) if isinstance(axis, Range) else axis
        candidates += [{**base, key: value} for value in values if value != base[key]]
    return candidates


def check_trial_configs(space: SearchSpace, path: Path) -> None:
    """Build a TrainConfig for every trial the space can run (grid), or for each axis' extremes (optuna)."""
    for axis_values in candidate_axis_values(space):
        try:
            values = space.trial_config(axis_values)
            if space.kind == "federated":
                split_flat(values, where=str(path))
            else:
                dp_config.TrainConfig.from_dict(values, where=str(path))
        except ConfigError as error:
            shown = ", ".join(f"{key}={value!r}" for key, value in axis_values.items())
            raise ConfigError(f"{error} First failing trial: {shown}.") from None


def describe_axis(axis: Axis) -> str:
    if isinstance(axis, Range):
        parts = [f"low: {axis.low}", f"high: {axis.high}", f"log: {str(axis.log).lower()}"]
        if axis.num is not None:
            parts.append(f"num: {axis.num}")
        return "{" + ", ".join(parts) + "}"
    return repr(list(axis))
