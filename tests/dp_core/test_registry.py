"""Registries drive validation: what is registered at run time is selectable, what is not is refused."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dp_core.accounting import ACCOUNTANTS
from dp_core.config import PrivacyConfig, TrainConfig
from dp_core.data import DatasetSplits, load_dataset
from dp_core.dataset_facts import DATASETS, DatasetFacts
from dp_core.engines import ENGINES, Engine, GradSampleStep, PrivateStep, StepMechanism, make_dp_optimizer
from dp_core.errors import ConfigError
from dp_core.models import MODELS
from dp_core.privacy_plan import plan_privacy
from dp_core.registry import Registry, resolve_reference
from dp_core.train import train


class _LoopStep(GradSampleStep):
    """g_i straight from the definition: one backward per example, into ``p.grad_sample``."""

    def __init__(self, *, engine: _PerExampleLoop, **kwargs) -> None:
        super().__init__(engine=engine.name, **kwargs)
        self._owner = engine

    def backward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._owner.backward_calls += 1
        params = list(self.optimizer.params)
        per_example = [
            torch.autograd.grad(nn.functional.cross_entropy(self.model(images[i : i + 1]), labels[i : i + 1]), params)
            for i in range(len(images))
        ]
        for k, p in enumerate(params):
            p.grad_sample = (
                torch.stack([grads[k] for grads in per_example])
                if per_example
                else torch.zeros((0, *p.shape), dtype=p.dtype)
            )
        losses = [nn.functional.cross_entropy(self.model(images), labels).detach()] if len(images) else []
        return losses[0] if losses else torch.zeros(())


class _PerExampleLoop(Engine):
    """A new engine, registered at run time: per-example gradients by a Python loop, clipped and
    noised by Opacus' DP optimizer (``make_dp_optimizer``), as engine authors would write one."""

    name = "per_example_loop"

    def __init__(self) -> None:
        self.prepared = 0
        self.backward_calls = 0

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, mechanism: StepMechanism) -> PrivateStep:
        self.prepared += 1
        dp_optimizer = make_dp_optimizer(optimizer, mechanism)
        return _LoopStep(engine=self, model=model, optimizer=dp_optimizer)


@pytest.fixture
def loop_engine() -> Iterator[_PerExampleLoop]:
    engine = _PerExampleLoop()
    ENGINES.register(engine.name, engine)
    yield engine
    ENGINES.unregister(engine.name)


SETTINGS = {
    "dataset": "digits",
    "model": "mlp",
    "epochs": 1,
    "batch_size": 128,
    "lr": 1.0,
    "max_grad_norm": 0.1,
    "noise_multiplier": 1.0,
    "seed": 3,
}


def test_an_engine_registered_at_run_time_trains_through_train_config(loop_engine: _PerExampleLoop) -> None:
    digits = load_dataset("digits")
    config = TrainConfig.from_dict({**SETTINGS, "grad_sample_mode": loop_engine.name})
    assert config.privacy.grad_sample_mode == loop_engine.name
    result = train(config, data=digits, evaluate_test=False)

    assert loop_engine.prepared == 1
    assert loop_engine.backward_calls == result.plan.steps_per_epoch == result.final.steps
    # Same seed, so the same batches and the same noise stream: the new engine clips and noises as
    # the hooks engine (checked against DP-SGD's definition in test_engines) does, up to rounding.
    # C = 0.1 clips nearly every example, so a missing clip or noise term would change the weights.
    reference = train(
        TrainConfig.from_dict({**SETTINGS, "grad_sample_mode": "hooks"}), data=digits, evaluate_test=False
    )
    for ours, theirs in zip(result.model.state_dict().values(), reference.model.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    without_noise = train(
        TrainConfig.from_dict({**SETTINGS, "grad_sample_mode": loop_engine.name, "noise_multiplier": 0.0}),
        data=digits,
        evaluate_test=False,
    )
    weights = next(iter(result.model.state_dict().values()))
    assert not torch.allclose(weights, next(iter(without_noise.model.state_dict().values())), atol=1e-3)


def test_an_unregistered_engine_is_refused_naming_the_known_ones(loop_engine: _PerExampleLoop) -> None:
    with pytest.raises(
        ConfigError,
        match=r"Expected grad_sample_mode to be one of auto, .*per_example_loop.*, but "
        r"got grad_sample_mode='warp_drive'",
    ):
        PrivacyConfig(noise_multiplier=1.0, grad_sample_mode="warp_drive")
    ENGINES.unregister(loop_engine.name)
    with pytest.raises(ConfigError, match="Expected grad_sample_mode to be one of"):
        TrainConfig.from_dict({**SETTINGS, "grad_sample_mode": loop_engine.name})


@pytest.mark.parametrize(("key", "registry"), [("model", MODELS), ("dataset", DATASETS), ("accountant", ACCOUNTANTS)])
def test_unregistered_names_are_refused_naming_the_known_ones(key: str, registry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=rf"Expected {key} to be one of .*, but got {key}='nope'") as info:
        TrainConfig.from_dict({**SETTINGS, key: "nope"})
    assert all(name in str(info.value) for name in registry)


def test_a_dataset_and_a_model_registered_at_run_time_train(loop_engine: _PerExampleLoop) -> None:
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(300, 2, 3, 3, generator=generator), torch.randint(0, 3, (300,), generator=generator)

    def load() -> DatasetSplits:
        return DatasetSplits(
            name="tiny",
            train=TensorDataset(images[:200], labels[:200]),
            test=TensorDataset(images[200:], labels[200:]),
            num_classes=3,
            input_shape=(2, 3, 3),
        )

    def linear(*, input_shape, num_classes, gn_groups):  # type: ignore[no-untyped-def]
        return nn.Sequential(nn.Flatten(), nn.Linear(18, num_classes))

    DATASETS.register(
        "tiny",
        DatasetFacts(input_shape=(2, 3, 3), num_classes=3, train_size=200, test_size=100, source="loader", load=load),
    )
    MODELS.register("tiny_linear", linear)
    try:
        config = TrainConfig.from_dict(
            {
                "dataset": "tiny",
                "model": "tiny_linear",
                "epochs": 2,
                "batch_size": 20,
                "noise_multiplier": 1.0,
                "delta": 1e-3,
            }
        )
        result = train(config)
    finally:
        DATASETS.unregister("tiny")
        MODELS.unregister("tiny_linear")
    assert result.plan.sample_rate == 20 / 200 and result.final.epoch == 2
    assert 0.0 <= result.final.test_accuracy <= 1.0


def test_an_accountant_registered_at_run_time_is_selectable() -> None:
    ACCOUNTANTS.register("rdp_again", ACCOUNTANTS.get("rdp"))
    try:
        ours = plan_privacy(TrainConfig.from_dict({**SETTINGS, "accountant": "rdp_again"}), train_size=1437)
    finally:
        ACCOUNTANTS.unregister("rdp_again")
    rdp = plan_privacy(TrainConfig.from_dict({**SETTINGS, "accountant": "rdp"}), train_size=1437)
    assert ours.accountant == "rdp_again" and ours.epsilon == rdp.epsilon
    with pytest.raises(ConfigError, match="Expected accountant to be one of prv, rdp, but got"):
        TrainConfig.from_dict({**SETTINGS, "accountant": "rdp_again"})


def test_a_dataset_fact_needs_a_loader_exactly_for_source_loader() -> None:
    with pytest.raises(ConfigError, match="load function exactly when source='loader'"):
        DatasetFacts(input_shape=(1, 2, 2), num_classes=2, train_size=10, test_size=5, source="loader")
    with pytest.raises(ConfigError, match="Expected source to be one of"):
        DatasetFacts(input_shape=(1, 2, 2), num_classes=2, train_size=10, test_size=5, source="web")


def test_a_reference_is_imported_on_get_only() -> None:
    registry = Registry("thing", references=True)
    registry.register("late", "json.tool:main")
    sys.modules.pop("json.tool", None)
    assert "json.tool" not in sys.modules
    assert registry.get("late") is resolve_reference("json.tool:main") and "json.tool" in sys.modules
    with pytest.raises(ValueError, match="Expected a reference 'module:attribute', but got 'json.tool'"):
        resolve_reference("json.tool")


def test_without_references_a_string_entry_is_the_entry() -> None:
    registry = Registry("label")
    registry.register("greeting", "os.path:join")
    assert registry.get("greeting") == "os.path:join"
