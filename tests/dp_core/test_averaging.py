"""Parameter averaging (``ema_decay``): the warm-up schedule, the trainer's use of it, resume, release."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dp_core.averaging import ParameterAverage, ema_decay_at
from dp_core.config import ConfigError, TrainConfig
from dp_core.data import load_dataset
from dp_core.models import build_model
from dp_core.train import EpochReport, StopTraining, evaluate, train

DIGITS = load_dataset("digits")
DIGITS_VAL = load_dataset("digits", validation_fraction=0.2)
# batch_size = N: one step per epoch, so that a run of t epochs ends at the t-th iterate.
ONE_STEP_EPOCHS = {
    "model": "mlp",
    "batch_size": len(DIGITS.train),
    "lr": 2.0,
    "max_grad_norm": 0.5,
    "accountant": "rdp",
}
FAST = {
    "model": "mlp",
    "epochs": 2,
    "batch_size": 256,
    "lr": 2.0,
    "max_grad_norm": 0.5,
    "noise_multiplier": 1.0,
    "accountant": "rdp",
}


def test_warm_up_is_min_of_decay_and_one_plus_t_over_ten_plus_t() -> None:
    assert [ema_decay_at(0.999, t) for t in (0, 1, 8)] == [0.1, 2 / 11, 0.5]
    assert ema_decay_at(0.5, 100) == 0.5
    assert ema_decay_at(0.999, 10**6) == 0.999


def test_update_lerps_every_parameter_and_copies_buffers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    average = ParameterAverage(model, decay=0.9)
    assert all(not p.requires_grad for p in average.module.parameters())
    start = [p.detach().clone() for p in model.parameters()]
    expected = start
    for t in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
        d = ema_decay_at(0.9, t)
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
        average.update(model)
    for mine, want in zip(average.module.parameters(), expected, strict=True):
        torch.testing.assert_close(mine, want)
    assert torch.equal(average.module[1].running_mean, model[1].running_mean)  # copied, not averaged
    assert average.updates == 3


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5, True, "0.9", float("nan")])
def test_ema_decay_outside_the_open_unit_interval_is_refused(decay: object) -> None:
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig.from_dict({"ema_decay": decay})


def test_ema_decay_is_off_by_default_and_round_trips() -> None:
    assert TrainConfig.from_dict({}).optimizer.ema_decay is None
    config = TrainConfig.from_dict({"ema_decay": 0.999})
    assert config.to_dict()["ema_decay"] == 0.999
    assert TrainConfig.from_dict(config.to_dict()) == config


def _initial_model() -> nn.Module:
    torch.manual_seed(0)  # as train() seeds the model's initialisation
    return build_model("mlp", input_shape=DIGITS.input_shape, num_classes=DIGITS.num_classes)


def test_trainer_averages_the_iterates_of_logical_steps_and_evaluates_the_average() -> None:
    """The t-th iterate is the last model of a t-epoch run (one step per epoch, same seeds): the EMA
    run's model must be the warm-up EMA of exactly those iterates, and its raw accuracy theirs."""
    decay = 0.6  # the warm-up reaches it at t = 12.5: every update below uses (1 + t) / (10 + t)
    iterates = [
        train(TrainConfig.from_dict({**ONE_STEP_EPOCHS, "epochs": t, "noise_multiplier": 1.0, "seed": 0}), data=DIGITS)
        for t in (1, 2, 3)
    ]
    expected = [p.detach().clone() for p in _initial_model().parameters()]
    for t, run in enumerate(iterates):
        d = ema_decay_at(decay, t)
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, run.model.parameters())]
    config = TrainConfig.from_dict({**ONE_STEP_EPOCHS, "epochs": 3, "noise_multiplier": 1.0, "ema_decay": decay})
    averaged = train(config, data=DIGITS)
    for mine, want in zip(averaged.model.parameters(), expected, strict=True):
        torch.testing.assert_close(mine, want)
    # Averaging is post-processing: the iterates, their accuracies and ε are the plain run's.
    plain = iterates[-1]
    assert [r.test_accuracy_raw for r in averaged.reports] == [r.test_accuracy for r in plain.reports]
    assert [r.epsilon for r in averaged.reports] == [r.epsilon for r in plain.reports]
    assert plain.final.test_accuracy_raw is None and plain.final.val_accuracy_raw is None
    _, accuracy = evaluate(averaged.model, *DIGITS.test.tensors, batch_size=1024)
    assert averaged.final.test_accuracy == accuracy


def test_virtual_batch_chunks_do_not_update_the_average() -> None:
    whole = train(TrainConfig.from_dict({**FAST, "ema_decay": 0.9}), data=DIGITS)
    chunked = train(TrainConfig.from_dict({**FAST, "ema_decay": 0.9, "max_physical_batch_size": 64}), data=DIGITS)
    for a, b in zip(whole.model.parameters(), chunked.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _stop_after_first(report: EpochReport) -> None:
    if report.epoch == 1:
        raise StopTraining


def test_resumed_run_has_the_uninterrupted_runs_average(tmp_path: Path) -> None:
    config = TrainConfig.from_dict({**FAST, "epochs": 3, "ema_decay": 0.95, "validation_fraction": 0.2})
    uninterrupted = train(config, data=DIGITS_VAL)
    checkpoint = tmp_path / "state.pt"
    partial = train(config, data=DIGITS_VAL, checkpoint_path=checkpoint, on_epoch=_stop_after_first)
    assert len(partial.reports) == 1
    resumed = train(config, data=DIGITS_VAL, checkpoint_path=checkpoint)
    for a, b in zip(resumed.model.parameters(), uninterrupted.model.parameters(), strict=True):
        assert torch.equal(a, b)

    def measured(reports: tuple[EpochReport, ...]) -> list[tuple]:
        return [(r.val_accuracy, r.val_accuracy_raw, r.test_accuracy, r.test_accuracy_raw) for r in reports]

    assert measured(resumed.reports) == measured(uninterrupted.reports)


def test_best_model_file_holds_the_average_and_scores_its_accuracy(tmp_path: Path) -> None:
    config = TrainConfig.from_dict({**FAST, "ema_decay": 0.9, "validation_fraction": 0.2})
    best = tmp_path / "best.pt"
    result = train(config, data=DIGITS_VAL, best_model_path=best)
    kept = torch.load(best, weights_only=True)
    model = build_model("mlp", input_shape=DIGITS_VAL.input_shape, num_classes=DIGITS_VAL.num_classes)
    model.load_state_dict(kept["state_dict"])
    _, accuracy = evaluate(model, *DIGITS_VAL.validation.tensors, batch_size=1024)
    assert accuracy == kept["val_accuracy"] == max(r.val_accuracy for r in result.reports)
    if kept["epoch"] == result.final.epoch:
        for name, tensor in result.model.state_dict().items():
            assert torch.equal(kept["state_dict"][name], tensor)


def test_a_checkpoint_from_before_ema_decay_resumes_as_a_run_without_it(tmp_path: Path) -> None:
    config = TrainConfig.from_dict(FAST)
    uninterrupted = train(config, data=DIGITS)
    checkpoint = tmp_path / "state.pt"
    train(config, data=DIGITS, checkpoint_path=checkpoint, on_epoch=_stop_after_first)
    state = torch.load(checkpoint, weights_only=False)
    state["config"] = {k: v for k, v in state["config"].items() if k != "ema_decay"}  # as written before it
    del state["average"]
    torch.save(state, checkpoint)
    resumed = train(config, data=DIGITS, checkpoint_path=checkpoint)
    for a, b in zip(resumed.model.parameters(), uninterrupted.model.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="belong to this configuration"):  # but not for a run that averages
        train(TrainConfig.from_dict({**FAST, "ema_decay": 0.9}), data=DIGITS, checkpoint_path=checkpoint)
