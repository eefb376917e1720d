"""``channels_last``: convolutions in NHWC give the same DP step, or the run is refused.

The clipped, noiseless step of a model and batch in torch.channels_last is compared with the same
step in the default layout, engine by engine: those that declare ``supports_channels_last`` must
agree within float32 rounding; train() refuses the others (Opacus' hooks and ghost unfold a
convolution's input as if it were contiguous and compute other per-sample gradients).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import TensorDataset

from dp_core.config import ConfigError, TrainConfig
from dp_core.data import load_dataset
from dp_core.dpsgd import make_private_step
from dp_core.engines import ENGINES
from dp_core.models import build_model
from dp_core.train import train

DIGITS = load_dataset("digits")
LAYOUT_SAFE = [name for name in ENGINES if ENGINES.get(name).supports_channels_last]
LAYOUT_UNSAFE = [name for name in ENGINES if not ENGINES.get(name).supports_channels_last]


def _clipped_step(engine: str, *, channels_last: bool) -> list[torch.Tensor]:
    """The noiseless clipped mean gradient of 4 MNIST-shaped examples (C below most norms: clipping acts)."""
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(4, 1, 28, 28, generator=generator), torch.randint(0, 10, (4,), generator=generator)
    torch.manual_seed(0)
    model = build_model("mnist_cnn", input_shape=(1, 28, 28), num_classes=10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    step = make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=0.05,
        expected_batch_size=4,
        grad_sample_mode=engine,
    )
    step.backward(images, labels)
    assert bool((step.per_sample_norms() > 0.05).any())
    step.optimizer.step()
    return [p.grad.detach().clone() for p in model.parameters()]


def test_the_engines_that_allow_channels_last_are_bk_and_functorch() -> None:
    assert sorted(LAYOUT_SAFE) == ["bk", "functorch"]


@pytest.mark.parametrize("engine", LAYOUT_SAFE)
def test_a_channels_last_step_gives_the_clipped_gradient_of_the_default_layout(engine: str) -> None:
    for default, nhwc in zip(
        _clipped_step(engine, channels_last=False), _clipped_step(engine, channels_last=True), strict=True
    ):
        torch.testing.assert_close(nhwc, default, rtol=1e-4, atol=1e-7)


SMALL = dataclasses.replace(DIGITS, train=TensorDataset(*(t[:400] for t in DIGITS.train.tensors)))
CNN = {"model": "digits_cnn", "epochs": 1, "batch_size": 64, "lr": 0.5, "max_grad_norm": 1.0, "device": "cpu"}


def test_train_with_channels_last_matches_the_default_layout() -> None:
    config = TrainConfig.from_dict({**CNN, "noise_multiplier": 1.0, "accountant": "rdp"})
    default = train(config, data=SMALL, evaluate_test=False)
    nhwc = train(config.replace(channels_last=True), data=SMALL, evaluate_test=False)
    assert nhwc.config.channels_last and nhwc.final.steps == default.final.steps
    for a, b in zip(nhwc.model.parameters(), default.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine", LAYOUT_UNSAFE)
def test_a_configuration_asking_channels_last_of_an_engine_it_breaks_is_refused(engine: str) -> None:
    """Refused where the configuration is built (a sweep's space, when it is loaded); auto's choice
    is checked by train() once made (bk, for every model of the zoo)."""
    with pytest.raises(
        ConfigError, match=rf"\(functorch, bk\), but got grad_sample_mode='{engine}' with channels_last=True"
    ):
        TrainConfig.from_dict({**CNN, "noise_multiplier": 1.0, "grad_sample_mode": engine, "channels_last": True})
    # Without DP there are no per-sample gradients to get wrong.
    TrainConfig.from_dict({**CNN, "disable_dp": True, "grad_sample_mode": engine, "channels_last": True})


def test_train_refuses_channels_last_for_inputs_that_are_not_images() -> None:
    images, labels = DIGITS.train.tensors
    tabular = dataclasses.replace(
        DIGITS,
        train=TensorDataset(images.flatten(1), labels),
        test=TensorDataset(DIGITS.test.tensors[0].flatten(1), DIGITS.test.tensors[1]),
        input_shape=(64,),
    )
    config = TrainConfig.from_dict({**CNN, "model": "mlp", "noise_multiplier": 1.0, "channels_last": True})
    with pytest.raises(ConfigError, match=r"channels_last only for image data.*\(64,\)"):
        train(config, data=tabular)


def test_channels_last_is_a_flat_boolean_key() -> None:
    assert TrainConfig.from_dict({"channels_last": True}).to_dict()["channels_last"] is True
    assert TrainConfig.from_dict({}).channels_last is False
    with pytest.raises(ConfigError, match="channels_last"):
        TrainConfig.from_dict({"channels_last": "yes"})
