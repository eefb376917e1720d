"""What crosses between the sweep driver and its workers, typed, with one encoder and one decoder.

Driver → worker: a unit of work's spec, one opaque JSON string in the Ray trial's config (Ray
Tune would expand nested dicts into search dimensions). A unit is a :class:`TrialSpec` (one
trial, of a kind the planning registry knows) or a :class:`PackSpec` (trials trained at once).

Worker → driver: :class:`EpochRow`, one per epoch (a round, for federated trials). A lone trial's
Ray result is one row; a pack's result carries rows of several members under ``members``. The
searcher and the tracking callback both read results through :func:`rows_of`.

ε = ∞ (a trial without noise) travels as infinity: Python's JSON writes and reads ``Infinity``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from dp_core.federated import FederatedPlan
from dp_core.privacy_plan import PrivacyPlan
from dp_core.registry import Registry

__all__ = [
    "TrialSpec",
    "PackSpec",
    "UnitSpec",
    "EpochRow",
    "encode_unit",
    "decode_unit",
    "unit_of",
    "encode_rows",
    "rows_of",
    "outcome_of",
    "LatestRows",
    "TRIAL_FIELD",
    "PLAN_TYPES",
    "ConfirmationJob",
    "ConfirmationResult",
    "TrainedModel",
    "wall_clock_ms",
]

#: The key of a Ray trial's config that holds its unit's spec.
TRIAL_FIELD = "trial"

#: trial kind -> the plan type its trials carry (a kind's planner: sweeps.planning.kinds.PLANNERS).
PLAN_TYPES = Registry("kind", references=True)
PLAN_TYPES.register("central", PrivacyPlan)
PLAN_TYPES.register("federated", FederatedPlan)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrialSpec:
    """One trial as a worker runs it: its kind, identity, flat dp_core configuration (σ resolved),
    the params the tracker logs, and the privacy plan computed by the driver."""

    kind: str  # a name in PLAN_TYPES
    name: str
    key: str
    #: The flat dp_core configuration the worker trains (TrainConfig.from_dict, or a federated one).
    train: Mapping[str, Any]
    params: Mapping[str, Any]
    plan: PrivacyPlan | FederatedPlan

    def __post_init__(self) -> None:
        plan_type = PLAN_TYPES.get(self.kind)
        if not isinstance(self.plan, plan_type):
            raise TypeError(f"a {self.kind} trial carries a {plan_type.__name__}, not {type(self.plan).__name__}")

    @property
    def planned_epsilon(self) -> float:
        return self.plan.planned_epsilon

    @property
    def delta(self) -> float:
        return self.plan.delta

    @property
    def accountant(self) -> str:
        return self.plan.accountant

    @property
    def members(self) -> tuple[TrialSpec, ...]:
        return (self,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "key": self.key,
            "train": dict(self.train),
            "params": dict(self.params),
            "plan": self.plan.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrialSpec:
        kind = values["kind"]
        return cls(
            kind=kind,
            name=values["name"],
            key=values["key"],
            train=dict(values["train"]),
            params=dict(values["params"]),
            plan=PLAN_TYPES.get(kind).from_dict(values["plan"]),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackSpec:
    """Trials of one group (:func:`dp_core.vectorized.group_signature`) trained together, at most
    ``width`` at once; each member is reported as the trial it would be alone."""

    kind: ClassVar[str] = "pack"
    name: str
    key: str
    width: int
    members: tuple[TrialSpec, ...]

    @classmethod
    def of(cls, members: Iterable[TrialSpec], *, width: int) -> PackSpec:
        members = tuple(members)
        keys = " ".join(m.key for m in members)
        return cls(
            name=f"pack_{members[0].name}+{len(members) - 1}",
            key=hashlib.sha256(keys.encode()).hexdigest()[:16],
            width=width,
            members=members,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "key": self.key,
            "width": self.width,
            "members": [m.to_dict() for m in self.members],
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PackSpec:
        return cls(
            name=values["name"],
            key=values["key"],
            width=int(values["width"]),
            members=tuple(TrialSpec.from_dict(m) for m in values["members"]),
        )


UnitSpec = TrialSpec | PackSpec


def encode_unit(unit: UnitSpec) -> str:
    """A unit's spec as the one string a Ray trial's config holds."""
    return json.dumps(unit.to_dict(), sort_keys=True)


def decode_unit(text: str) -> UnitSpec:
    values = json.loads(text)
    return PackSpec.from_dict(values) if values["kind"] == PackSpec.kind else TrialSpec.from_dict(values)


def unit_of(tune_config: Mapping[str, Any]) -> UnitSpec:
    """The unit a Ray trial's config stands for."""
    return decode_unit(tune_config[TRIAL_FIELD])


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpochRow:
    """What a trial reports after an epoch (a round, for federated trials).

    ``val_accuracy``/``val_loss`` are on the validation split: a search trial never evaluates the
    test split. ``epsilon`` is ∞ for a trial without noise. ``diverged`` holds the reason a trial
    failed in its worker (its only row then, with accuracy 0): its loss diverged, or, with
    ``out_of_memory``, its step did not fit in the GPU's memory. The ``*_seconds`` say where the time went;
    setup/report are the time between epochs that was neither training nor evaluation.
    ``started_ms``/``ended_ms`` are wall-clock times (Unix epoch, ms) taken in the worker: when the
    trial began (the same in all its rows; 0: not measured) and when this epoch ended; the tracker
    makes them its MLflow run's start and end (:func:`wall_clock_ms`).
    """

    epoch: int
    epochs_planned: int
    val_accuracy: float
    epsilon: float
    steps: int = 0
    val_loss: float | None = None
    #: With parameter averaging (ema_decay), the last iterate's validation accuracy; val_accuracy is the average's.
    val_accuracy_raw: float | None = None
    delta: float | None = None
    accountant: str | None = None
    epoch_seconds: float = 0.0
    eval_seconds: float = 0.0
    setup_seconds: float = 0.0
    report_seconds: float = 0.0
    stopped_by_budget: bool = False
    pruned: bool = False
    diverged: str | None = None
    out_of_memory: bool = False
    client_epsilons: tuple[float, ...] = ()
    started_ms: int = 0
    ended_ms: int = 0
    #: The row of a trial restored at its end, reported again (sweeps.workers.trial): logged already.
    replayed: bool = False

    @classmethod
    def of_divergence(
        cls, reason: str, *, epochs_planned: int, started_ms: int = 0, out_of_memory: bool = False
    ) -> EpochRow:
        """The one row of a trial that failed in its worker: its loss diverged, or it ran out of GPU memory."""
        return cls(
            epoch=0,
            epochs_planned=epochs_planned,
            val_accuracy=0.0,
            epsilon=math.inf,
            diverged=reason,
            out_of_memory=out_of_memory,
            started_ms=started_ms,
            ended_ms=wall_clock_ms() if started_ms else 0,
        )

    @property
    def ended(self) -> bool:
        """Whether the trial is done after this row: pruned here, diverged, or through its epochs."""
        return self.pruned or self.diverged is not None or self.epoch >= self.epochs_planned

    def to_result(self) -> dict[str, Any]:
        """The flat dict a worker reports to Ray Tune (Tune reads ``val_accuracy`` and ``epoch``)."""
        result = dataclasses.asdict(self)
        result["client_epsilons"] = list(self.client_epsilons)
        return result

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> EpochRow:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in result.items() if k in names}
        values["client_epsilons"] = tuple(values.get("client_epsilons", ()))
        return cls(**values)


def outcome_of(last_row: EpochRow | None, *, error: bool = False) -> str:
    """completed / stopped_by_budget / pruned / failed / failed_oom, from a trial's last row. A trial
    that stopped short of its epochs without a budget stop was stopped by the scheduler: pruned. One
    that ran out of GPU memory reported it (failed_oom) rather than raised: retried unchanged, it
    would run out again."""
    if last_row is not None and last_row.out_of_memory:
        return "failed_oom"
    if error or (last_row is not None and last_row.diverged is not None):
        return "failed"
    if last_row is None:
        return "pruned"
    if last_row.stopped_by_budget:
        return "stopped_by_budget"
    return "pruned" if last_row.epoch < last_row.epochs_planned else "completed"


def encode_rows(rows: Mapping[str, Iterable[EpochRow]]) -> str:
    """A pack's result field ``members``: each member's rows since the pack's last result."""
    return json.dumps({key: [row.to_result() for row in member] for key, member in rows.items()})


def rows_of(result: Mapping[str, Any], lone_key: str) -> dict[str, list[EpochRow]]:
    """The rows a Ray Tune result carries, per member trial key, in order: a pack's members'
    (several epochs each), or a lone trial's one row under ``lone_key``."""
    if "members" in result:
        return {key: [EpochRow.from_result(r) for r in rows] for key, rows in json.loads(result["members"]).items()}
    if "epoch" not in result:
        return {}  # what Ray Tune hands on for a trial that never reported
    return {lone_key: [EpochRow.from_result(result)]}


class LatestRows:
    """Each trial's latest row, by trial key. A row older than the one kept is stale: Ray replays
    a restored trial's results from its checkpoint, and those must not move a trial back."""

    def __init__(self) -> None:
        self._rows: dict[str, EpochRow] = {}

    def update(self, key: str, row: EpochRow) -> bool:
        """Keep ``row`` as ``key``'s latest; False (and nothing kept) if it is stale. A divergence
        (reported as epoch 0) is never stale."""
        kept = self._rows.get(key)
        if kept is not None and row.epoch < kept.epoch and row.diverged is None:
            return False
        self._rows[key] = row
        return True

    def get(self, key: str) -> EpochRow | None:
        return self._rows.get(key)

    def pop(self, key: str) -> EpochRow | None:
        return self._rows.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfirmationJob:
    """One confirmation run (:mod:`sweeps.results.confirm`): search trial ``trial``'s
    configuration nominated at ``epoch`` for the ε bound ``bound``, as confirmed (``train``: its
    epochs, σ calibrated to the bound, a fresh seed); ``seed_index`` is its place among the
    configuration's seeds. ``keep_model``: the worker hands the trained model back
    (:class:`TrainedModel`), for the one refit run per bound whose model is registered."""

    name: str
    trial: str
    epoch: int
    bound: float
    seed_index: int
    train: Mapping[str, Any]
    keep_model: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainedModel:
    """A run's trained weights as a worker hands them back: the model's ``state_dict`` on the CPU,
    and the data's shape, from which the driver builds the model again (``dp_core.models.build_model``
    with the configuration's model name)."""

    state_dict: Mapping[str, Any]
    input_shape: tuple[int, int, int]
    num_classes: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfirmationResult:
    """What a confirmation run measured at its epoch (NaN throughout: it diverged or its worker failed),
    and when it trained: ``started_ms``/``ended_ms`` as :class:`EpochRow`'s (0: not measured), and its
    trained model if its job asked for it (``ConfirmationJob.keep_model``)."""

    name: str
    epsilon: float
    val_accuracy: float
    test_accuracy: float
    #: With parameter averaging (ema_decay), the last iterate's test accuracy (test_accuracy is the average's).
    test_accuracy_raw: float = math.nan
    started_ms: int = 0
    ended_ms: int = 0
    model: TrainedModel | None = None

    @classmethod
    def failed(cls, name: str, *, started_ms: int = 0) -> ConfirmationResult:
        ended = wall_clock_ms() if started_ms else 0
        return cls(
            name=name,
            epsilon=math.nan,
            val_accuracy=math.nan,
            test_accuracy=math.nan,
            started_ms=started_ms,
            ended_ms=ended,
        )


def wall_clock_ms() -> int:
    """Now, as MLflow times runs and metrics: Unix epoch milliseconds. A worker takes it where the
    training happens, so that a run's start and end are its training's, not the driver's writes."""
    return int(time.time() * 1000)
