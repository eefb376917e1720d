"""The training loop end to end on digits: ε reporting, budget stop, checkpoint/resume, hooks."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from dp_core import accounting
from dp_core.config import TrainConfig
from dp_core.data import DatasetSplits, load_data, load_dataset
from dp_core.models import build_model
from dp_core.train import EpochReport, StopTraining, TrainingDiverged, TrainResult, evaluate, train

ROOT = Path(__file__).resolve().parents[2]
DIGITS = load_dataset("digits")
FAST = {"model": "mlp", "epochs": 3, "batch_size": 256, "lr": 2.0, "max_grad_norm": 0.5}


def test_reports_every_epoch_with_the_accountants_epsilon() -> None:
    seen: list[EpochReport] = []
    result = train(
        TrainConfig.from_dict({**FAST, "noise_multiplier": 1.5, "accountant": "rdp"}), on_epoch=seen.append, data=DIGITS
    )
    assert [r.epoch for r in seen] == [1, 2, 3]
    q = 256 / len(DIGITS.train)
    steps_per_epoch = int(1 / q)
    for report in seen:
        assert report.steps == steps_per_epoch * report.epoch
        assert report.accountant == "rdp" and report.delta == 1e-5
        assert report.epsilon == pytest.approx(
            accounting.epsilon(noise_multiplier=1.5, sample_rate=q, steps=report.steps, delta=1e-5, accountant="rdp"),
            rel=1e-12,
        )
    assert seen[0].epsilon < seen[1].epsilon < seen[2].epsilon
    assert result.final.test_accuracy > 0.5  # learns something real even in 3 noisy epochs


def test_target_epsilon_is_met_not_exceeded() -> None:
    result = train(TrainConfig.from_dict({**FAST, "target_epsilon": 2.0}), data=DIGITS)
    assert result.final.epsilon <= 2.0
    assert result.final.epsilon > 1.9  # calibrated, not wildly conservative
    assert result.config.privacy.noise_multiplier == result.plan.noise_multiplier


def test_budget_stops_before_the_step_that_would_exceed_it() -> None:
    config = TrainConfig.from_dict(
        {**FAST, "epochs": 6, "noise_multiplier": 2.0, "epsilon_budget": 1.5, "accountant": "rdp"}
    )
    result = train(config, data=DIGITS)
    q = 256 / len(DIGITS.train)
    last = result.final
    assert result.stopped_early and last.stopped_by_budget
    assert last.epsilon <= 1.5
    one_more = accounting.epsilon(
        noise_multiplier=2.0, sample_rate=q, steps=last.steps + 1, delta=1e-5, accountant="rdp"
    )
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


def test_best_model_is_the_earliest_epoch_of_highest_validation_accuracy_and_scores_it(tmp_path) -> None:
    config = TrainConfig.from_dict({**FAST, "epochs": 4, "noise_multiplier": 1.2, "validation_fraction": 0.2})
    data = load_data(config.data)
    best_path, checkpoint = tmp_path / "best.pt", tmp_path / "state.pt"
    seen: list[tuple[int, int, int]] = []  # (epoch, the best file's epoch, the checkpoint's epochs) in on_epoch

    def look(report: EpochReport) -> None:
        state = torch.load(checkpoint, weights_only=False) if checkpoint.exists() else {"reports": []}
        seen.append((report.epoch, torch.load(best_path, weights_only=True)["epoch"], len(state["reports"])))

    result = train(
        config,
        data=data,
        best_model_path=best_path,
        checkpoint_path=checkpoint,
        checkpoint_every_seconds=3600.0,  # so a checkpoint is saved only for the best model (and at the end)
        on_epoch=look,
    )
    accuracies = [r.val_accuracy for r in result.reports]
    best_epoch = accuracies.index(max(accuracies)) + 1  # the earliest of equals, as the frontier's best
    kept = torch.load(best_path, weights_only=True)
    assert (kept["epoch"], kept["val_accuracy"]) == (best_epoch, max(accuracies))
    best_so_far = 0
    for epoch, file_epoch, checkpointed in seen:  # saved before on_epoch sees an improving epoch, with the checkpoint
        improved = accuracies[epoch - 1] > max(accuracies[: epoch - 1], default=-1.0)
        best_so_far = epoch if improved else best_so_far
        assert file_epoch == best_so_far
        if improved:
            assert checkpointed == epoch
    model = build_model("mlp", input_shape=tuple(kept["input_shape"]), num_classes=kept["num_classes"])
    model.load_state_dict(kept["state_dict"])
    _, accuracy = evaluate(model, *data.validation.tensors, batch_size=config.test_batch_size)
    assert accuracy == kept["val_accuracy"]

    # Interrupted after epoch 1 and resumed: the best file is the uninterrupted run's.
    resumed_best, resumed_state = tmp_path / "resumed_best.pt", tmp_path / "resumed_state.pt"

    def stop_after_first(report: EpochReport) -> None:
        if report.epoch == 1:
            raise StopTraining

    train(config, data=data, best_model_path=resumed_best, checkpoint_path=resumed_state, on_epoch=stop_after_first)
    train(config, data=data, best_model_path=resumed_best, checkpoint_path=resumed_state)
    again = torch.load(resumed_best, weights_only=True)
    assert (again["epoch"], again["val_accuracy"]) == (kept["epoch"], kept["val_accuracy"])
    for name, tensor in kept["state_dict"].items():
        torch.testing.assert_close(again["state_dict"][name], tensor)


def test_checkpoint_of_another_config_is_refused(tmp_path) -> None:
    checkpoint = tmp_path / "state.pt"
    train(
        TrainConfig.from_dict({**FAST, "epochs": 1, "noise_multiplier": 1.0}), data=DIGITS, checkpoint_path=checkpoint
    )
    with pytest.raises(ValueError, match="different one"):
        train(
            TrainConfig.from_dict({**FAST, "epochs": 1, "noise_multiplier": 2.0}),
            data=DIGITS,
            checkpoint_path=checkpoint,
        )


def test_non_private_and_noiseless_runs_report_infinite_epsilon() -> None:
    for extra in ({"disable_dp": True}, {"noise_multiplier": 0.0}):
        result = train(TrainConfig.from_dict({**FAST, "epochs": 1, **extra}), data=DIGITS)
        assert math.isinf(result.final.epsilon)


def test_per_layer_clipping_adam_cosine_and_virtual_batches_train() -> None:
    config = TrainConfig.from_dict(
        {
            **FAST,
            "epochs": 2,
            "noise_multiplier": 1.0,
            "clipping": "per_layer",
            "optimizer": "adam",
            "lr": 0.01,
            "lr_schedule": "cos",
            "max_physical_batch_size": 64,
        }
    )
    result = train(config, data=DIGITS)
    assert result.final.steps == 2 * int(len(DIGITS.train) / 256)
    assert result.final.test_accuracy > 0.3


def test_nan_loss_is_reported_as_diverged_without_its_value() -> None:
    config = TrainConfig.from_dict({**FAST, "epochs": 2, "disable_dp": True, "lr": 1e30})
    with pytest.raises(TrainingDiverged, match="lower the learning rate") as caught:
        train(config, data=DIGITS)
    # The message is logged (an MLflow tag): it says that the loss diverged, not what it was.
    assert "non-finite" in str(caught.value) and "nan" not in str(caught.value).lower()


# ---- what is released -------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess that imports torch and trains: seconds on 2 cores
def test_no_training_loss_is_reported_or_printed(tmp_path: Path) -> None:
    """The training loss is an un-noised statistic of the training data: no report or output holds it."""
    assert "train_loss" not in {field.name for field in dataclasses.fields(EpochReport)}
    saved = tmp_path / "metrics.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dp_core.train",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--sigma",
            "1.0",
            "--metrics-json",
            str(saved),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed == json.loads(saved.read_text())
    assert "train_loss" not in printed and "test_loss" in printed and "test_accuracy" in printed
    assert "train_loss" not in done.stderr and "train loss" not in done.stderr  # nor in the progress bar


# ---- resuming: every random stream restored -----------------------------------------------------


def _padded_to_28(data: DatasetSplits) -> DatasetSplits:
    """Digits framed in 28x28 (background around them), so mnist_cnn, the zoo's model with dropout, runs on it."""

    def pad(split: TensorDataset) -> TensorDataset:
        images, labels = split.tensors
        return TensorDataset(torch.nn.functional.pad(images, (10, 10, 10, 10), value=images.min().item()), labels)

    return dataclasses.replace(data, train=pad(data.train), test=pad(data.test), input_shape=(1, 28, 28))


DIGITS_28 = _padded_to_28(DIGITS)
DROPOUT = {**FAST, "model": "mnist_cnn", "epochs": 2, "lr": 0.5, "noise_multiplier": 1.0}


def _stop_after_first(report: EpochReport) -> None:
    if report.epoch == 1:
        raise StopTraining


def _interrupted_then_resumed(config: TrainConfig, checkpoint: Path, data: DatasetSplits) -> TrainResult:
    partial = train(config, data=data, checkpoint_path=checkpoint, on_epoch=_stop_after_first)
    assert len(partial.reports) == 1 and checkpoint.exists()
    return train(config, data=data, checkpoint_path=checkpoint)


def _without_timings(result: TrainResult) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.to_dict().items() if not k.endswith("_seconds")} for r in result.reports]


def test_resumed_run_with_dropout_draws_the_same_masks(tmp_path: Path) -> None:
    """Dropout draws from torch's global generator: a resumed run must continue its stream, not restart it."""
    model = build_model("mnist_cnn", input_shape=DIGITS_28.input_shape, num_classes=DIGITS_28.num_classes)
    assert any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in model.modules())
    config = TrainConfig.from_dict({**DROPOUT, "device": "cpu"})
    uninterrupted = train(config, data=DIGITS_28)
    resumed = _interrupted_then_resumed(config, tmp_path / "state.pt", DIGITS_28)
    assert _without_timings(resumed) == _without_timings(uninterrupted)
    for a, b in zip(resumed.model.parameters(), uninterrupted.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_from_before_cuda_rng_and_without_train_loss_still_resumes(tmp_path: Path) -> None:
    config = TrainConfig.from_dict({**FAST, "epochs": 2, "noise_multiplier": 1.2})
    uninterrupted = train(config, data=DIGITS)
    checkpoint = tmp_path / "state.pt"
    train(config, data=DIGITS, checkpoint_path=checkpoint, on_epoch=_stop_after_first)
    # As written before the CUDA generators were saved and while reports still carried the training loss.
    state = torch.load(checkpoint, weights_only=False)
    del state["cuda_rng"]
    state["reports"] = [{**r, "train_loss": 0.0} for r in state["reports"]]
    torch.save(state, checkpoint)
    resumed = train(config, data=DIGITS, checkpoint_path=checkpoint)
    assert _without_timings(resumed) == _without_timings(uninterrupted)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resumed_run_on_a_gpu_restores_the_cuda_generators(tmp_path: Path) -> None:
    """On a GPU dropout draws from the CUDA generator, which the checkpoint must carry."""
    config = TrainConfig.from_dict({**DROPOUT, "device": "cuda"})
    # cuDNN may pick nondeterministic kernels; dropout masks, the thing under test, differ far more than they do.
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        uninterrupted = train(config, data=DIGITS_28)
        checkpoint = tmp_path / "state.pt"
        resumed = _interrupted_then_resumed(config, checkpoint, DIGITS_28)
    assert torch.load(checkpoint, weights_only=False)["cuda_rng"] is not None
    for a, b in zip(resumed.model.parameters(), uninterrupted.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert resumed.final.test_accuracy == pytest.approx(uninterrupted.final.test_accuracy, abs=1.01 / len(DIGITS.test))
