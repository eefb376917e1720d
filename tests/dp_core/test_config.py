"""Every bad setting fails at the edge with the key, the value and what is allowed."""

from __future__ import annotations

import pytest

from dp_core.config import ConfigError, TrainConfig
from dp_core.privacy_plan import plan_privacy


def test_round_trip_and_defaults() -> None:
    config = TrainConfig()
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.privacy.target_epsilon == 3.0 and config.data.dataset == "digits"


@pytest.mark.parametrize(
    "values,needles",
    [
        ({"noise_multiplier": -1.0}, ["noise_multiplier", "-1.0", ">= 0"]),
        ({"noise_multiplier": float("nan")}, ["noise_multiplier", "nan"]),
        ({"max_grad_norm": 0.0}, ["max_grad_norm", "0.0", "> 0"]),
        ({"max_grad_norm": -2}, ["max_grad_norm", "-2"]),
        ({"delta": 0.0}, ["delta", "(0.0, 1.0)"]),
        ({"delta": 1.5}, ["delta", "1.5"]),
        ({"dataset": "cifar100"}, ["dataset", "cifar100", "cifar10", "digits", "mnist"]),
        ({"model": "resnet50"}, ["model", "resnet50", "resnet18_gn", "wrn16_4"]),
        ({"optimizer": "lamb"}, ["optimizer", "lamb", "adam", "rmsprop", "sgd"]),
        ({"lr": 0}, ["lr", "0"]),
        ({"lr": "fast"}, ["lr", "fast"]),
        ({"epochs": 0}, ["epochs", "integer >= 1"]),
        ({"epochs": 2.5}, ["epochs", "2.5"]),
        ({"accountant": "gdp"}, ["accountant", "gdp", "prv", "rdp"]),
        ({"clipping": "adaptive"}, ["clipping", "flat", "per_layer"]),
        ({"target_epsilon": 3.0, "noise_multiplier": 1.0}, ["exactly one of noise_multiplier and target_epsilon"]),
        ({"batch_size": 64, "sample_rate": 0.1}, ["exactly one of batch_size and sample_rate"]),
        ({"sample_rate": 1.5, "batch_size": None}, ["sample_rate", "1.5"]),
        ({"lr_schedule": "step"}, ["lr_schedule", "constant", "cos"]),
        ({"device": "tpu"}, ["device", "tpu"]),
        ({"secure_mode": True}, ["secure_mode", "torchcsprng"]),
    ],
)
def test_bad_values_name_key_value_and_rule(values: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict(values)
    for needle in needles:
        assert needle in str(error.value)


def test_unknown_key_suggests_the_closest_one() -> None:
    with pytest.raises(ConfigError, match=r"Unknown key 'max_grad_nrom' in my.yaml\. Did you mean 'max_grad_norm'\?"):
        TrainConfig.from_dict({"max_grad_nrom": 1.0}, where="my.yaml")


def test_delta_must_be_below_one_over_n() -> None:
    config = TrainConfig.from_dict({"delta": 1e-3})  # digits: N = 1437, 1/N ≈ 6.96e-4
    with pytest.raises(ConfigError) as error:
        plan_privacy(config, train_size=1437)
    assert "delta" in str(error.value) and "1/N" in str(error.value) and "1437" in str(error.value)


def test_unreachable_target_epsilon_is_a_config_error() -> None:
    config = TrainConfig.from_dict({"target_epsilon": 1e-4, "sample_rate": 1.0, "epochs": 50})
    with pytest.raises(ConfigError, match="target_epsilon"):
        plan_privacy(config, train_size=1437)


def test_batch_larger_than_dataset() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        plan_privacy(TrainConfig.from_dict({"batch_size": 5000}), train_size=1437)


def test_replace_switches_between_alternatives() -> None:
    config = TrainConfig().replace(noise_multiplier=1.2)
    assert config.privacy.target_epsilon is None and config.privacy.noise_multiplier == 1.2
    config = config.replace(sample_rate=0.1)
    assert config.batch_size is None and config.sample_rate == 0.1


def test_disable_dp_needs_no_noise_setting() -> None:
    config = TrainConfig.from_dict({"disable_dp": True})
    plan = plan_privacy(config, train_size=1437)
    assert not plan.private and plan.epsilon == float("inf")
