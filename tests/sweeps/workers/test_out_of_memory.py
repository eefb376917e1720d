"""A trial out of GPU memory ends as the outcome failed_oom, naming the fix, and is not retried.

The real exception type (``torch.OutOfMemoryError``, which ``torch.cuda.OutOfMemoryError`` is)
raised by a registered model's forward in training, through the real trial code path: Ray Tune
with the sweep's FailureConfig, the sweep's trainable, dp_core.train.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ray import tune
from torch import nn

from dp_core.config import TrainConfig
from dp_core.models import MODELS, register_model
from sweeps.planning import plan_trial
from sweeps.planning.packing import pack_spec
from sweeps.protocol import TRIAL_FIELD, EpochRow, encode_unit, outcome_of, rows_of
from sweeps.workers.trainable import run_trial
from sweeps.workers.trial import out_of_memory_message

OUT_OF_MEMORY_MODEL = "test_out_of_memory_in_training"


class _OutOfMemoryInTraining(nn.Module):
    """A linear model whose training forward on a real batch raises what a CUDA allocation that does
    not fit raises (the vectorised step's check of a model, on 2 examples, passes)."""

    def __init__(self, *, input_shape: tuple[int, ...], num_classes: int, gn_groups: int) -> None:
        super().__init__()
        self.linear = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and len(images) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.19 GiB total)")
        return self.linear(images.flatten(1))


def _ensure_registered() -> None:
    if OUT_OF_MEMORY_MODEL not in MODELS:
        register_model(OUT_OF_MEMORY_MODEL, _OutOfMemoryInTraining)


@pytest.fixture(autouse=True)
def _out_of_memory_model() -> Iterator[None]:
    """Registered for this module's tests only: registered at import, it would be in the registry of every
    test collected beside this module (tests/dp_core/test_models.py checks the built-in names)."""
    _ensure_registered()
    yield
    MODELS.unregister(OUT_OF_MEMORY_MODEL)


TRAIN = {
    "dataset": "digits",
    "model": OUT_OF_MEMORY_MODEL,
    "batch_size": 256,
    "epochs": 2,
    "noise_multiplier": 1.0,
    "lr": 0.5,
    "validation_fraction": 0.1,
    "grad_sample_mode": "hooks",
}


def _counted(config: dict[str, Any]) -> None:
    """The sweep's trainable, counting its starts (a retry would start it again)."""
    with Path(config["starts"]).open("a") as starts:
        starts.write("start\n")
    _ensure_registered()  # in Ray's worker process
    run_trial(config)


def test_the_message_names_the_trial_and_half_the_physical_batch() -> None:
    planned = plan_trial(TRAIN, name="trial_0007", axis_values={})
    config = TrainConfig.from_dict(planned.train_config)
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    unset = out_of_memory_message("trial_0007", config, planned.plan, train_size=1294, error=error)
    expected = math.ceil(planned.plan.sample_rate * 1294)  # its expected logical batch qN
    assert "trial trial_0007 ran out of GPU memory" in unset and "Tried to allocate 2.00 GiB" in unset
    assert f"max_physical_batch_size: {expected // 2}" in unset
    chunked = config.replace(max_physical_batch_size=64)
    assert "max_physical_batch_size: 32" in out_of_memory_message(
        "t", chunked, planned.plan, train_size=1294, error=error
    )


@pytest.mark.slow
def test_an_out_of_memory_trial_is_failed_oom_and_not_retried(local_ray, tmp_path: Path) -> None:
    planned = plan_trial(TRAIN, name="trial_0003", axis_values={"noise_multiplier": 1.0})
    starts = tmp_path / "starts.txt"
    config = {TRIAL_FIELD: encode_unit(pack_spec([planned], width=1)), "starts": str(starts)}
    run_config = tune.RunConfig(
        storage_path=str(tmp_path / "ray"),
        name="sweep",
        verbose=0,
        failure_config=tune.FailureConfig(max_failures=2),  # as sweeps.driver.runner sets it
    )
    (result,) = tune.Tuner(_counted, param_space=config, run_config=run_config).fit()
    assert result.error is None  # ended as an outcome, not an exception Ray would retry
    assert starts.read_text().splitlines() == ["start"]
    row = EpochRow.from_result(result.metrics)
    assert outcome_of(row) == "failed_oom" and row.out_of_memory and row.epoch == 0
    assert "trial trial_0003 ran out of GPU memory" in row.diverged and "max_physical_batch_size: " in row.diverged
    assert "Tried to allocate 20.00 GiB" in row.diverged


@pytest.mark.slow
def test_a_pack_out_of_memory_reports_each_member_failed_oom_and_is_not_retried(local_ray, tmp_path: Path) -> None:
    planned = [
        plan_trial({**TRAIN, "noise_multiplier": sigma}, name=f"trial_000{i}", axis_values={"noise_multiplier": sigma})
        for i, sigma in enumerate((1.0, 2.0))
    ]
    starts = tmp_path / "starts.txt"
    config = {TRIAL_FIELD: encode_unit(pack_spec(planned, width=2)), "starts": str(starts)}
    run_config = tune.RunConfig(
        storage_path=str(tmp_path / "ray"), name="sweep", verbose=0, failure_config=tune.FailureConfig(max_failures=2)
    )
    (result,) = tune.Tuner(_counted, param_space=config, run_config=run_config).fit()
    assert result.error is None and starts.read_text().splitlines() == ["start"]
    rows = rows_of(result.metrics, "")
    assert set(rows) == {p.key for p in planned}
    for member in planned:
        (row,) = rows[member.key]
        assert outcome_of(row) == "failed_oom"
        assert (
            f"trial {member.name} ran out of GPU memory" in row.diverged and "max_physical_batch_size: " in row.diverged
        )
