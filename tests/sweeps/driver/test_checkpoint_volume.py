"""The checkpoint volume a sweep will write, said before it starts (sweeps.driver.checkpoint_volume)."""

from __future__ import annotations

import io

import pytest
import torch

from dp_core.config import TrainConfig
from dp_core.models import build_configured_model
from dp_core.train import build_optimizer
from sweeps.driver.checkpoint_volume import checkpoint_bytes, checkpoint_volume, shapes_known_here

CIFAR = {"dataset": "cifar10", "model": "cifar_cnn", "batch_size": 64, "noise_multiplier": 1.0}


def _saved_size(config: TrainConfig) -> int:
    """The bytes torch.save writes for the model's and the optimizer's state after one step (the
    optimizer's state exists from its first step), as dp_core.train's checkpoint holds them."""
    torch.manual_seed(0)
    model = build_configured_model(config, input_shape=(3, 32, 32), num_classes=10)
    optimizer = build_optimizer(config, model)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    return buffer.getbuffer().nbytes


@pytest.mark.parametrize(
    "optimizer", [{"optimizer": "sgd", "momentum": 0.9}, {"optimizer": "sgd", "momentum": 0.0}, {"optimizer": "adam"}]
)
def test_the_estimate_is_the_size_of_a_saved_checkpoint(optimizer: dict) -> None:
    config = TrainConfig.from_dict({**CIFAR, **optimizer})
    estimate = checkpoint_bytes(config, input_shape=(3, 32, 32), num_classes=10)
    assert estimate == pytest.approx(_saved_size(config), rel=0.02)  # torch.save's headers are the rest


def test_the_volume_counts_the_largest_model_for_every_trial_and_says_so_in_one_line() -> None:
    configs = [{**CIFAR, "epochs": 3}, {**CIFAR, "model": "mlp", "epochs": 5}]
    volume = checkpoint_volume(configs, trials=12, every_minutes=10.0, shape_of=shapes_known_here())
    assert volume is not None
    sizes = {
        values["model"]: checkpoint_bytes(TrainConfig.from_dict(values), input_shape=(3, 32, 32), num_classes=10)
        for values in configs
    }
    assert sizes["mlp"] > sizes["cifar_cnn"]  # on 3x32x32 inputs the MLP's first layer is the largest
    assert (volume.checkpoint_bytes, volume.model) == (sizes["mlp"], "mlp")
    assert (volume.trials, volume.max_saves_per_trial) == (12, 5)
    line = volume.describe()
    assert "\n" not in line and "12 trial(s)" in line and "every 10 min" in line and "at most 5 each" in line
    assert "checkpoint_every_minutes" in line
    # Within a sweep's time budget a trial saves at most every 10 minutes, and after its last epoch.
    budgeted = checkpoint_volume(
        configs, trials=12, every_minutes=10.0, shape_of=shapes_known_here(), time_budget_s=1500
    )
    assert budgeted is not None and budgeted.max_saves_per_trial == 3
    # A dataset whose shape the driver does not know: nothing to say.
    assert checkpoint_volume(configs, trials=1, every_minutes=1.0, shape_of=lambda config: None) is None
