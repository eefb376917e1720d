"""The typed seam between the sweep driver and its workers (sweeps.protocol): what is sent comes back equal."""

from __future__ import annotations

import json
import math

import pytest

from sweeps.planning import plan_trial
from sweeps.protocol import (
    TRIAL_FIELD,
    EpochRow,
    LatestRows,
    PackSpec,
    TrialSpec,
    decode_unit,
    encode_rows,
    encode_unit,
    outcome_of,
    rows_of,
    unit_of,
)

BASE = {"dataset": "digits", "model": "mlp", "epochs": 3, "batch_size": 128, "validation_fraction": 0.1}


def _spec(name: str, **values) -> TrialSpec:
    return plan_trial({**BASE, **values}, name=name, axis_values={}).spec()


def test_a_trial_and_a_pack_come_back_equal_plans_and_infinities_included() -> None:
    private = _spec("t0", noise_multiplier=1.0, seed=1)
    no_noise = _spec("t1", disable_dp=True, seed=2)
    assert no_noise.planned_epsilon == math.inf and no_noise.kind == "central"
    for unit in (private, no_noise, PackSpec.of([private, no_noise], width=2)):
        text = encode_unit(unit)
        assert isinstance(text, str) and decode_unit(text) == unit
        assert unit_of({TRIAL_FIELD: text, "board": "b"}) == unit
    assert decode_unit(encode_unit(no_noise)).plan.epsilon_by_epoch == (math.inf,) * 3


def test_a_spec_refuses_a_kind_it_does_not_know_or_a_plan_of_another_kind() -> None:
    spec = _spec("t", noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"Expected kind to be one of central, federated, but got kind='quantum'"):
        TrialSpec.from_dict({**spec.to_dict(), "kind": "quantum"})
    with pytest.raises(TypeError, match="FederatedPlan"):
        TrialSpec(kind="federated", name="t", key="k", train={}, params={}, plan=spec.plan)


def test_a_row_survives_ray_tune_s_own_keys_and_keeps_infinity() -> None:
    row = EpochRow(epoch=2, epochs_planned=3, val_accuracy=0.8, epsilon=math.inf, client_epsilons=(1.0, math.inf))
    result = {**row.to_result(), "training_iteration": 2, "trial_id": "abc", "time_this_iter_s": 0.1}
    assert EpochRow.from_result(result) == row
    # Through JSON as Ray's loggers and a pack's members field carry it: Infinity, not -1.
    assert EpochRow.from_result(json.loads(json.dumps(row.to_result()))) == row


def test_rows_of_reads_a_pack_s_members_and_a_lone_trial_s_row() -> None:
    first = [EpochRow(epoch=e, epochs_planned=3, val_accuracy=0.5 + e / 10, epsilon=float(e)) for e in (1, 2)]
    second = [EpochRow.of_divergence("loss is NaN", epochs_planned=3)]
    pack_result = {"epoch": 2, "members": encode_rows({"a": first, "b": second}), "val_accuracy": 0.7}
    assert rows_of(pack_result, "ignored") == {"a": first, "b": second}
    assert rows_of(first[0].to_result(), "lone") == {"lone": [first[0]]}
    assert rows_of({"training_iteration": 0}, "lone") == {}  # a trial that never reported


def test_latest_rows_ignore_replays_but_take_a_divergence() -> None:
    latest = LatestRows()
    late = EpochRow(epoch=3, epochs_planned=3, val_accuracy=0.9, epsilon=2.0)
    assert latest.update("k", late) and latest.get("k") == late
    assert not latest.update("k", EpochRow(epoch=2, epochs_planned=3, val_accuracy=0.7, epsilon=1.5))
    assert latest.get("k") == late
    diverged = EpochRow.of_divergence("loss is NaN", epochs_planned=3)
    assert latest.update("k", diverged) and latest.pop("k") == diverged and "k" not in latest


def test_outcomes_from_a_trial_s_last_row() -> None:
    def row(epoch: int, **flags) -> EpochRow:
        return EpochRow(epoch=epoch, epochs_planned=4, val_accuracy=0.5, epsilon=1.0, **flags)

    assert outcome_of(row(4)) == "completed" and row(4).ended
    assert outcome_of(row(2)) == "pruned" and not row(2).ended  # stopped short by the scheduler
    assert outcome_of(row(2, pruned=True)) == "pruned" and row(2, pruned=True).ended
    assert outcome_of(row(3, stopped_by_budget=True)) == "stopped_by_budget"
    assert outcome_of(EpochRow.of_divergence("nan", epochs_planned=4)) == "failed"
    assert outcome_of(row(4), error=True) == "failed" and outcome_of(None) == "pruned"
