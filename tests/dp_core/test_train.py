"""The training loop end to end on digits: ε reporting, budget stop, checkpoint/resume, hooks."""

from __future__ import annotations

import math

import pytest
import torch

from dp_core import accounting
from dp_core.config import TrainConfig
from dp_core.data import load_dataset
from dp_core.train import EpochReport, StopTraining, TrainingDiverged, train

DIGITS = load_dataset("digits")
FAST = {"model": "mlp", "epochs": 3, "batch_size": 256, "lr": 2.0, "max_grad_norm": 0.5}


def test_reports_every_epoch_with_the_accountants_epsilon() -> None:
    seen: list[EpochReport] = []
    result = train(TrainConfig.from_dict({**FAST, "noise_multiplier": 1.5, "accountant": "rdp"}),
                   on_epoch=seen.append, data=DIGITS)
    assert [r.epoch for r in seen] == [1, 2, 3]
    q = 256 / len(DIGITS.train)
    steps_per_epoch = int(1 / q)
    for report in seen:
        assert report.steps == steps_per_epoch * report.epoch
        assert report.accountant == "rdp" and report.delta == 1e-5
        assert report.epsilon == pytest.approx(accounting.epsilon(
            noise_multiplier=1.5, sample_rate=q, steps=report.steps, delta=1e-5, accountant="rdp"), rel=1e-12)
    assert seen[0].epsilon < seen[1].epsilon < seen[2].epsilon
    assert result.final.test_accuracy > 0.5  # learns something real even in 3 noisy epochs


def test_target_epsilon_is_met_not_exceeded() -> None:
    result = train(TrainConfig.from_dict({**FAST, "target_epsilon": 2.0}), data=DIGITS)
    assert result.final.epsilon <= 2.0
    assert result.final.epsilon > 1.9  # calibrated, not wildly conservative
    assert result.config.privacy.noise_multiplier == result.plan.noise_multiplier


def test_budget_stops_before_the_step_that_would_exceed_it() -> None:
    config = TrainConfig.from_dict({**FAST, "epochs": 6, "noise_multiplier": 2.0, "epsilon_budget": 1.5,
                                    "accountant": "rdp"})
    result = train(config, data=DIGITS)
    q = 256 / len(DIGITS.train)
    last = result.final
    assert result.stopped_early and last.stopped_by_budget
    assert last.epsilon <= 1.5
    one_more = accounting.epsilon(noise_multiplier=2.0, sample_rate=q, steps=last.steps + 1, delta=1e-5,
                                  accountant="rdp")
    assert one_more > 1.5
    assert all(r.epsilon <= 1.5 for r in result.reports)
    assert last.steps < 6 * int(1 / q)


def test_budget_too_small_for_one_step_is_a_config_error() -> None:
    from dp_core.config import ConfigError

    with pytest.raises(ConfigError, match="at least one step"):
        train(TrainConfig.from_dict({**FAST, "noise_multiplier": 0.5, "epsilon_budget": 0.01}), data=DIGITS)


def test_resumed_run_equals_uninterrupted_run(tmp_path) -> None:
    config = TrainConfig.from_dict({**FAST, "noise_multiplier": 1.2, "accountant": "rdp"})
    uninterrupted = train(config, data=DIGITS)

    checkpoint = tmp_path / "state.pt"

    def stop_after_first(report: EpochReport) -> None:
        if report.epoch == 1:
            raise StopTraining

    partial = train(config, data=DIGITS, checkpoint_path=checkpoint, on_epoch=stop_after_first)
    assert len(partial.reports) == 1 and checkpoint.exists()
    resumed = train(config, data=DIGITS, checkpoint_path=checkpoint)
    assert [r.epsilon for r in resumed.reports] == [r.epsilon for r in uninterrupted.reports]
    assert [r.steps for r in resumed.reports] == [r.steps for r in uninterrupted.reports]
    for a, b in zip(resumed.model.parameters(), uninterrupted.model.parameters()):
        torch.testing.assert_close(a, b)


def test_checkpoint_of_another_config_is_refused(tmp_path) -> None:
    checkpoint = tmp_path / "state.pt"
    train(TrainConfig.from_dict({**FAST, "epochs": 1, "noise_multiplier": 1.0}), data=DIGITS, checkpoint_path=checkpoint)
    with pytest.raises(ValueError, match="different one"):
        train(TrainConfig.from_dict({**FAST, "epochs": 1, "noise_multiplier": 2.0}), data=DIGITS, checkpoint_path=checkpoint)


def test_non_private_and_noiseless_runs_report_infinite_epsilon() -> None:
    for extra in ({"disable_dp": True}, {"noise_multiplier": 0.0}):
        result = train(TrainConfig.from_dict({**FAST, "epochs": 1, **extra}), data=DIGITS)
        assert math.isinf(result.final.epsilon)


def test_per_layer_clipping_adam_cosine_and_virtual_batches_train() -> None:
    config = TrainConfig.from_dict({**FAST, "epochs": 2, "noise_multiplier": 1.0, "clipping": "per_layer",
                                    "optimizer": "adam", "lr": 0.01, "lr_schedule": "cos",
                                    "max_physical_batch_size": 64})
    result = train(config, data=DIGITS)
    assert result.final.steps == 2 * int(len(DIGITS.train) / 256)
    assert result.final.test_accuracy > 0.3


def test_nan_loss_is_reported_as_diverged() -> None:
    config = TrainConfig.from_dict({**FAST, "epochs": 2, "disable_dp": True, "lr": 1e30})
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train(config, data=DIGITS)
