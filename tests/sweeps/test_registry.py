"""sweeps' plug-in points are registries (dp_core.registry.Registry, with references): what is registered is selectable.

Pruners (sweeps.space.PRUNERS), trial kinds (sweeps.planning.PLANNERS with sweeps.protocol.PLAN_TYPES)
and runners (sweeps.workers.RUNNERS): a name registered at run time passes the same validation as
a built-in one, and an unknown name is refused with the names that are known.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from dp_core.config import ConfigError
from sweeps.planning import PLANNERS, plan_trial, trial_kind
from sweeps.planning.pruning import BandedSuccessiveHalving, NoPruning
from sweeps.protocol import PLAN_TYPES, TRIAL_FIELD, encode_unit
from sweeps.space import PRUNERS, SPACES_DIR, load_space
from sweeps.workers import RUNNERS, run_trial

BASE = {
    "dataset": "digits",
    "model": "mlp",
    "epochs": 2,
    "batch_size": 128,
    "validation_fraction": 0.1,
    "noise_multiplier": 1.0,
}
RUN_CALLS: list[tuple[Any, dict[str, Any]]] = []


def record_run(unit: Any, tune_config: dict[str, Any]) -> None:
    """A runner registered by reference ("module:function") in a test."""
    RUN_CALLS.append((unit, tune_config))


@dataclasses.dataclass(frozen=True)
class _ToyTrial:
    """What the toy kind's planner returns: a central trial renamed, so that the test sees it ran."""

    inner: Any
    kind: str = "toy"


def _plan_toy(config_values: Any, *, name: str, axis_values: Any, where: str = "") -> _ToyTrial:
    values = {key: value for key, value in config_values.items() if key != "kind"}
    central = PLANNERS.get("central")(values, name=name, axis_values=axis_values, where=where)
    return _ToyTrial(inner=central)


@pytest.fixture
def toy_kind():
    PLANNERS.register("toy", _plan_toy)
    PLAN_TYPES.register("toy", PLAN_TYPES.get("central"))
    RUNNERS.register("toy", f"{__name__}:record_run")
    yield "toy"
    for registry in (PLANNERS, PLAN_TYPES, RUNNERS):
        registry.unregister("toy")
    RUN_CALLS.clear()


def test_a_registered_trial_kind_is_planned_by_its_planner(toy_kind: str) -> None:
    assert trial_kind({**BASE, "kind": toy_kind}) == "toy"
    planned = plan_trial({**BASE, "kind": toy_kind}, name="t0", axis_values={})
    assert isinstance(planned, _ToyTrial)
    assert planned.inner.plan.planned_epsilon > 0 and planned.inner.name == "t0"


def test_an_unknown_trial_kind_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"Expected kind to be one of central, federated, but got kind='quantum'\."):
        plan_trial({**BASE, "kind": "quantum"}, name="t0", axis_values={})


def test_a_registered_runner_runs_its_kind_of_unit(toy_kind: str) -> None:
    central = plan_trial(BASE, name="t0", axis_values={}).spec()
    toy = dataclasses.replace(central, kind=toy_kind)
    tune_config = {TRIAL_FIELD: encode_unit(toy), "board": None}
    run_trial(tune_config)
    assert len(RUN_CALLS) == 1
    unit, config = RUN_CALLS[0]
    assert unit == toy and config is tune_config


def test_an_unknown_runner_is_refused_with_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"Expected kind to be one of central, federated, pack, but got kind='quantum'\."
    ):
        RUNNERS.get("quantum")


def _space_file(tmp_path: Path, pruner: str) -> Path:
    data = yaml.safe_load((SPACES_DIR / "digits_quick.yaml").read_text())
    data.update(name="pruned", pruner=pruner)
    path = tmp_path / "pruned.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class _EveryOtherEpoch(NoPruning):
    """A toy rule: judged at every second epoch, stops nothing."""

    def __init__(self, *, grace_period: int, max_epochs: int) -> None:
        super().__init__(grace_period=grace_period, max_epochs=max_epochs)
        self.rungs = list(range(2, max_epochs, 2))

    def rung_epochs(self) -> list[int]:
        return list(self.rungs)


def test_a_registered_pruner_is_accepted_in_a_space_file(tmp_path: Path) -> None:
    PRUNERS.register("every_other", _EveryOtherEpoch)
    try:
        space = load_space(str(_space_file(tmp_path, "every_other")))
        assert space.pruner == "every_other" and PRUNERS.get(space.pruner) is _EveryOtherEpoch
    finally:
        PRUNERS.unregister("every_other")
    with pytest.raises(ConfigError, match=r"Expected pruner to be one of asha, none, but got pruner='every_other'\."):
        load_space(str(_space_file(tmp_path, "every_other")))


def test_every_registered_pruner_keeps_the_rule_contract() -> None:
    """Built from (grace_period, max_epochs), it answers rung_epochs and judge, as the driver asks."""
    assert PRUNERS.get("asha") is BandedSuccessiveHalving and PRUNERS.get("none") is NoPruning
    for name in PRUNERS.names():
        rule = PRUNERS.get(name)(grace_period=1, max_epochs=9)
        rungs = rule.rung_epochs()
        assert all(isinstance(epoch, int) and 1 <= epoch < 9 for epoch in rungs), (name, rungs)
        assert rule.judge([]) == []
    assert PRUNERS.get("none")(grace_period=1, max_epochs=9).rung_epochs() == []  # no board for none
    assert BandedSuccessiveHalving(grace_period=1, max_epochs=9).rung_epochs() == [1, 3]
