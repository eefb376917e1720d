"""A lone trial of a private-selection sweep keeps the model of its best epoch in its checkpoint
(sweeps.workers.trial), and the driver reads it back from the sweep's Ray storage (sweeps.driver.runner).

Real Ray Tune and the real trainer: the kept weights score, on the validation split, exactly the
validation accuracy the trial reported for that epoch, the earliest of its best.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ray import tune

from dp_core.config import TrainConfig
from dp_core.data import load_data
from dp_core.models import build_model
from dp_core.train import evaluate
from sweeps.driver.runner import copy_from_checkpoint
from sweeps.planning import plan_trial
from sweeps.planning.packing import pack_spec
from sweeps.protocol import TRIAL_FIELD, encode_unit
from sweeps.workers.trainable import run_trial
from sweeps.workers.trial import BEST_MODEL_FILE, KEEP_BEST_MODEL_FIELD

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

TRAIN = {
    "dataset": "digits",
    "model": "mlp",
    "batch_size": 256,
    "epochs": 4,
    "noise_multiplier": 1.0,
    "lr": 0.5,
    "validation_fraction": 0.1,
}


def _run(tmp_path: Path, *, keep: bool) -> tune.ResultGrid:
    planned = plan_trial(TRAIN, name="trial_0000_drawabc", axis_values={"noise_multiplier": 1.0})
    config = {TRIAL_FIELD: encode_unit(pack_spec([planned], width=1))}
    if keep:
        config[KEEP_BEST_MODEL_FIELD] = True
    run_config = tune.RunConfig(storage_path=str(tmp_path / "ray"), name=f"sweep-{keep}", verbose=0)
    return tune.Tuner(run_trial, param_space=config, run_config=run_config).fit()


def test_a_trial_asked_to_keep_its_best_model_has_it_in_its_latest_checkpoint(tmp_path: Path) -> None:
    results = _run(tmp_path, keep=True)
    (result,) = results
    rows = result.metrics_dataframe.sort_values("epoch")
    accuracies = list(rows["val_accuracy"])
    assert list(rows["epoch"]) == [1, 2, 3, 4]
    kept = tmp_path / "kept.pt"
    assert copy_from_checkpoint(results, trial="trial_0000_drawabc", filename=BEST_MODEL_FILE, to=kept)
    assert not copy_from_checkpoint(results, trial="trial_0001", filename=BEST_MODEL_FILE, to=tmp_path / "none.pt")
    best = torch.load(kept, weights_only=True)
    assert best["epoch"] == accuracies.index(max(accuracies)) + 1 and best["val_accuracy"] == max(accuracies)
    config = TrainConfig.from_dict(TRAIN)
    model = build_model("mlp", input_shape=tuple(best["input_shape"]), num_classes=best["num_classes"])
    model.load_state_dict(best["state_dict"])
    _, accuracy = evaluate(model, *load_data(config.data).validation.tensors, batch_size=config.test_batch_size)
    assert accuracy == best["val_accuracy"]

    # Other sweeps' trials keep no such model.
    plain = _run(tmp_path, keep=False)
    assert not copy_from_checkpoint(plain, trial="trial_0000_drawabc", filename=BEST_MODEL_FILE, to=tmp_path / "p.pt")
