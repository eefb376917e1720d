"""A lone trial restored by Ray Tune at the checkpoint of its last epoch (sweeps.workers.trial).

The launcher interrupted (Ctrl-C) between a trial's last report, which carries its last
checkpoint, and the trial's end: Tune saved the trial as running, and ``--resume`` restores it at
that checkpoint. It has nothing left to train. Without a report the driver sees a trial that
stopped short of its epochs and counts it pruned; it must report how it ended instead.
Real Ray Tune and the real trainer: here the trial raises after its last report in the first run,
and ``Tuner.restore(resume_errored=True)`` restores it from that checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ray import tune

from sweeps.planning import plan_trial
from sweeps.planning.packing import pack_spec
from sweeps.protocol import TRIAL_FIELD, EpochRow, encode_unit, outcome_of
from sweeps.workers.trainable import run_trial

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

EPOCHS = 2


def _ends_then_fails_once(config: dict[str, Any]) -> None:
    """The sweep's trainable, failing after its last report the first time (as an interrupt would
    leave it: last checkpoint saved, trial not ended)."""
    run_trial(config)
    marker = Path(config["marker"])
    if not marker.exists():
        marker.touch()
        raise RuntimeError("the launcher went away after the trial's last report")


def test_a_trial_restored_at_its_last_checkpoint_reports_its_last_row_again(tmp_path: Path) -> None:
    planned = plan_trial(
        {
            "dataset": "digits",
            "model": "mlp",
            "batch_size": 256,
            "epochs": EPOCHS,
            "noise_multiplier": 1.0,
            "lr": 0.5,
            "validation_fraction": 0.1,
        },
        name="trial_0000",
        axis_values={"noise_multiplier": 1.0},
    )
    config = {TRIAL_FIELD: encode_unit(pack_spec([planned], width=1)), "marker": str(tmp_path / "failed-once")}
    run_config = tune.RunConfig(storage_path=str(tmp_path / "ray"), name="sweep", verbose=0)
    first = tune.Tuner(_ends_then_fails_once, param_space=config, run_config=run_config).fit()
    (failed,) = first
    assert failed.error is not None
    last = EpochRow.from_result(failed.metrics)
    assert last.epoch == EPOCHS and not last.replayed and failed.checkpoint is not None

    restored = tune.Tuner.restore(str(tmp_path / "ray" / "sweep"), _ends_then_fails_once, resume_errored=True).fit()
    (ended,) = restored
    assert ended.error is None
    row = EpochRow.from_result(ended.metrics)
    # The same last row, said to be a replay (logged already), so the trial ends as it did.
    assert row.replayed and (row.epoch, row.val_accuracy, row.epsilon) == (last.epoch, last.val_accuracy, last.epsilon)
    assert outcome_of(row) == "completed"
