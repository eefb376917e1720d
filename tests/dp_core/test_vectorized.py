"""Vectorised trials against the oracle of each configuration trained alone by ``train``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dp_core import _vectorized_clipping, models, vectorized
from dp_core.config import ConfigError, TrainConfig
from dp_core.data import DatasetSplits, load_dataset
from dp_core.train import EpochReport, StopTraining, TrainResult, train
from dp_core.vectorized import ConfigsDiverged, can_vectorize, train_vectorized

DIGITS = load_dataset("digits")
BASE = {"epochs": 3, "batch_size": 256, "accountant": "rdp", "device": "cpu"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as a sweep slot runs. On a shared 2-core machine two OpenMP threads
    wait out each other's time slices (~10 ms per parallel op): 30x slower for digits_cnn."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _group(model: str) -> list[TrainConfig]:
    """Three trials of one sweep: other σ, C, lr, momentum, weight decay, schedule and seed.

    Kept in a stable regime (15 steps): where rounding flips a ReLU or max-pool near a tie, a
    chaotic run (e.g. digits_cnn at lr 2-4 for 50 steps) amplifies it, and then train()'s own
    engines (hooks vs bk) disagree with each other as much as with the vectorised run."""
    return [
        TrainConfig.from_dict(
            {**BASE, "model": model, "noise_multiplier": 1.0, "max_grad_norm": 0.5, "lr": 2.0, "seed": 0}
        ),
        TrainConfig.from_dict(
            {
                **BASE,
                "model": model,
                "noise_multiplier": 0.7,
                "max_grad_norm": 1.0,
                "lr": 0.5,
                "momentum": 0.9,
                "weight_decay": 0.01,
                "seed": 3,
            }
        ),
        TrainConfig.from_dict(
            {
                **BASE,
                "model": model,
                "target_epsilon": 4.0,
                "max_grad_norm": 2.0,
                "lr": 1.0,
                "momentum": 0.5,
                "lr_schedule": "cos",
                "seed": 7,
            }
        ),
    ]


def _assert_same_run(together: TrainResult, alone: TrainResult, *, rtol: float = 1e-4) -> None:
    """The vectorised result of a configuration is the one ``train`` gives, up to float rounding."""
    assert together.config == alone.config
    assert together.plan == alone.plan
    assert together.stopped_early == alone.stopped_early
    assert len(together.reports) == len(alone.reports)
    for mine, theirs in zip(together.reports, alone.reports):
        exact = ("epoch", "steps", "epsilon", "delta", "accountant", "noise_multiplier", "stopped_by_budget")
        assert {k: getattr(mine, k) for k in exact} == {k: getattr(theirs, k) for k in exact}
        assert mine.test_loss == pytest.approx(theirs.test_loss, rel=rtol)
        # Off by at most one of the 360 test digits, should rounding flip a near tie.
        assert mine.test_accuracy == pytest.approx(theirs.test_accuracy, abs=1.01 / len(DIGITS.test))
    for (name, mine), theirs in zip(together.model.named_parameters(), alone.model.parameters()):
        scale = theirs.abs().max().item()
        torch.testing.assert_close(mine, theirs, rtol=rtol, atol=rtol * scale, msg=lambda m, name=name: f"{name}: {m}")


@pytest.fixture(scope="module", params=["mlp", "digits_cnn"])
def runs(request: pytest.FixtureRequest) -> tuple[list[TrainConfig], list[TrainResult], list[TrainResult]]:
    configs = _group(request.param)
    seen: list[dict[int, EpochReport]] = []
    together = train_vectorized(configs, data=DIGITS, on_epoch=seen.append)
    assert [{r.epoch for r in reports.values()} for reports in seen] == [{1}, {2}, {3}]
    assert all(sorted(reports) == list(range(len(configs))) for reports in seen)
    alone = [train(config, data=DIGITS) for config in configs]
    return configs, together, alone


def test_each_configuration_equals_training_it_alone(runs) -> None:
    _, together, alone = runs
    for mine, theirs in zip(together, alone):
        _assert_same_run(mine, theirs)
    assert max(r.final.test_accuracy for r in together) > 0.3  # it learns: not a comparison of two untrained models


def test_target_epsilon_is_calibrated_as_train_calibrates_it(runs) -> None:
    configs, together, alone = runs
    assert configs[2].privacy.noise_multiplier is None
    assert together[2].plan.noise_multiplier == alone[2].plan.noise_multiplier
    assert together[2].config.privacy.noise_multiplier == alone[2].plan.noise_multiplier
    assert together[2].final.epsilon <= 4.0


def test_parameters_are_independent_copies_per_configuration(runs) -> None:
    _, together, _ = runs
    first, second = (dict(r.model.named_parameters()) for r in together[:2])
    assert all(first[n].data_ptr() != second[n].data_ptr() for n in first)
    assert not torch.equal(next(iter(first.values())), next(iter(second.values())))


@pytest.mark.parametrize("model", ["mlp", "digits_cnn"])
def test_physical_batches_and_memory_chunks_change_nothing(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """train() splits logical batches into virtual ones (max_physical_batch_size); the vectorised
    step clips in chunks of examples, and for models it must materialise per-example gradients,
    in chunks of at most _CHUNK_BYTES as well. Neither changes the result."""
    monkeypatch.setattr(vectorized, "_CHUNK_BYTES", 200_000)  # a handful of digits_cnn examples a chunk
    configs = [
        TrainConfig.from_dict(
            {
                **BASE,
                "model": model,
                "epochs": 2,
                "max_physical_batch_size": 100,
                "noise_multiplier": s,
                "lr": 1.0,
                "momentum": 0.5,
                "seed": i,
            }
        )
        for i, s in enumerate((0.8, 1.5))
    ]
    for config, mine in zip(configs, train_vectorized(configs, data=DIGITS)):
        _assert_same_run(mine, train(config, data=DIGITS))


def _naive_clipped_sum(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, max_grad_norm: float) -> list:
    """Σ_i clip(g_i) by a plain loop over examples, straight from the definition."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for image, label in zip(images, labels):
        loss = nn.functional.cross_entropy(model(image[None]), label[None])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        for t, g in zip(total, grads):
            t += min(1.0, max_grad_norm / (norm.item() + 1e-6)) * g
    return total


@pytest.mark.parametrize("clipping", ["ghost", "per_example"])
def test_both_clipping_routes_equal_the_per_example_definition(clipping: str) -> None:
    torch.manual_seed(0)
    configs = [models.build_model("mlp", input_shape=(1, 8, 8), num_classes=10) for _ in range(2)]
    route = {"ghost": _vectorized_clipping.ghost_clipping, "per_example": _vectorized_clipping.per_example_clipping}[
        clipping
    ]
    params, buffers = _vectorized_clipping.stack_models(configs)
    images, labels = DIGITS.train.tensors[0][:12], DIGITS.train.tensors[1][:12]
    weight = torch.ones(2, 12)
    weight[1, 7:] = 0  # config 1 sees a batch of 7, padded to 12
    max_grad_norm = torch.tensor([0.1, 100.0])  # clips every example; clips none
    sums, losses = route(configs[0])(
        params, buffers, images.expand(2, -1, -1, -1, -1), labels.expand(2, -1), weight, max_grad_norm
    )
    for k, (model, count) in enumerate(zip(configs, (12, 7))):
        expected = _naive_clipped_sum(model, images[:count], labels[:count], max_grad_norm[k].item())
        for name, e in zip(sums, expected):
            torch.testing.assert_close(sums[name][k], e, rtol=1e-5, atol=1e-7)
    assert losses.shape == (2, 12)


def _subset(size: int) -> DatasetSplits:
    images, labels = DIGITS.train.tensors
    return dataclasses.replace(DIGITS, train=TensorDataset(images[:size], labels[:size]))


def test_empty_batches_add_noise_and_step_as_opacus_does() -> None:
    """At q = 1/N a batch is empty a third of the time: in some steps for some configurations
    only, in some for all of them. Each still releases noise and steps, as in ``train``."""
    size = 100
    data = _subset(size)
    base = {**BASE, "model": "mlp", "epochs": 1, "batch_size": None, "sample_rate": 1 / size}
    configs = [
        TrainConfig.from_dict({**base, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "lr": 0.1, "seed": 0}),
        TrainConfig.from_dict(
            {**base, "noise_multiplier": 0.0, "max_grad_norm": 0.3, "lr": 0.1, "momentum": 0.5, "seed": 1}
        ),
        TrainConfig.from_dict({**base, "noise_multiplier": 2.0, "max_grad_norm": 2.0, "lr": 0.05, "seed": 2}),
    ]
    empty = []
    for config in configs:  # the sampling stream train() draws for this seed
        generator = torch.Generator().manual_seed(config.seed + 1)
        empty.append([not (torch.rand(size, generator=generator) < 1 / size).any() for _ in range(size)])
    assert sum(any(step) and not all(step) for step in zip(*empty)) > 20
    assert sum(all(step) for step in zip(*empty)) > 0
    together = train_vectorized(configs, data=data)
    for config, mine in zip(configs, together):
        _assert_same_run(mine, train(config, data=data))
    assert together[0].final.steps == size


def test_stop_training_from_the_hook_stops_every_configuration() -> None:
    configs = [
        TrainConfig.from_dict({**BASE, "model": "mlp", "noise_multiplier": s, "seed": i})
        for i, s in enumerate((0.8, 1.2))
    ]

    def stop_after_first(reports: dict[int, EpochReport]) -> None:
        if any(r.epoch == 1 for r in reports.values()):
            raise StopTraining

    results = train_vectorized(configs, data=DIGITS, on_epoch=stop_after_first)
    assert [len(r.reports) for r in results] == [1, 1]
    assert all(r.stopped_early and not r.final.stopped_by_budget for r in results)


def test_stopping_one_configuration_leaves_the_others_as_if_alone() -> None:
    """A pruned member stops where the hook said; the rest go on exactly as if trained alone."""
    configs = _group("mlp")

    def prune_middle(reports: dict[int, EpochReport]) -> list[int]:
        return [1] if 1 in reports and reports[1].epoch == 1 else []

    together = train_vectorized(configs, data=DIGITS, on_epoch=prune_middle)

    def stop_after_first(report: EpochReport) -> None:
        if report.epoch == 1:
            raise StopTraining

    _assert_same_run(together[1], train(configs[1], data=DIGITS, on_epoch=stop_after_first))
    for k in (0, 2):
        _assert_same_run(together[k], train(configs[k], data=DIGITS))


def test_a_configuration_that_joins_a_running_stack_trains_as_if_alone() -> None:
    """With width 2, five configurations take turns: each joins when one stops (pruned, or
    through its epochs), starts at its own epoch 1, and ends with the results it has alone."""
    configs = _group("mlp") + [
        TrainConfig.from_dict(
            {**BASE, "model": "mlp", "noise_multiplier": s, "max_grad_norm": c, "lr": lr, "momentum": 0.9, "seed": seed}
        )
        for s, c, lr, seed in ((0.9, 1.5, 1.5, 11), (1.3, 0.7, 0.8, 12))
    ]
    prune_at = {1: 1, 3: 2}  # configuration -> its epoch after which the hook stops it
    rounds: list[dict[int, int]] = []

    def prune(reports: dict[int, EpochReport]) -> list[int]:
        rounds.append({k: r.epoch for k, r in reports.items()})
        return [k for k, r in reports.items() if prune_at.get(k) == r.epoch]

    together = train_vectorized(configs, data=DIGITS, on_epoch=prune, width=2)
    assert rounds == [{0: 1, 1: 1}, {0: 2, 2: 1}, {0: 3, 2: 2}, {2: 3, 3: 1}, {3: 2, 4: 1}, {4: 2}, {4: 3}]

    def stop_at(epoch: int) -> Callable[[EpochReport], None]:
        def hook(report: EpochReport) -> None:
            if report.epoch == epoch:
                raise StopTraining

        return hook

    for k, config in enumerate(configs):
        alone = train(config, data=DIGITS, on_epoch=stop_at(prune_at[k]) if k in prune_at else None)
        _assert_same_run(together[k], alone)


def test_stop_training_leaves_configurations_that_had_not_started_without_reports() -> None:
    configs = [
        TrainConfig.from_dict({**BASE, "model": "mlp", "noise_multiplier": s, "seed": i})
        for i, s in enumerate((0.8, 1.2, 1.0))
    ]

    def stop(reports: dict[int, EpochReport]) -> None:
        raise StopTraining

    results = train_vectorized(configs, data=DIGITS, on_epoch=stop, width=2)
    assert [len(r.reports) for r in results] == [1, 1, 0]
    assert all(r.stopped_early for r in results)


def test_a_width_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="width >= 1"):
        train_vectorized(_group("mlp")[:1], data=DIGITS, width=0)


def test_stopping_an_unknown_configuration_is_refused() -> None:
    configs = _group("mlp")[:2]
    with pytest.raises(ValueError, match=r"\[5\]"):
        train_vectorized(configs, data=DIGITS, on_epoch=lambda reports: [5])


def test_a_diverging_configuration_is_named() -> None:
    configs = [TrainConfig.from_dict({**BASE, "model": "mlp", "noise_multiplier": 1.0, "lr": lr}) for lr in (0.5, 1e30)]
    with pytest.raises(ConfigsDiverged, match="config 1") as caught:
        train_vectorized(configs, data=DIGITS)
    assert caught.value.config_indices == (1,)
    assert "non-finite" in str(caught.value) and "nan" not in str(caught.value).lower()  # logged: no loss value


# ---------------------------------------------------------------------------------------------- grouping

GROUPABLE = {**BASE, "model": "mlp", "noise_multiplier": 1.0}


def test_a_sweeps_trials_can_be_vectorised() -> None:
    configs = [
        TrainConfig.from_dict({**GROUPABLE, "lr": 0.5, "seed": 1, "grad_sample_mode": "functorch"}),
        TrainConfig.from_dict(
            {
                **GROUPABLE,
                "noise_multiplier": None,
                "target_epsilon": 2.0,
                "max_grad_norm": 3.0,
                "momentum": 0.9,
                "weight_decay": 0.1,
                "lr_schedule": "cos",
            }
        ),
        # The same sampling rate spelled as a rate: what matters is q, not how it was given.
        TrainConfig.from_dict({**GROUPABLE, "batch_size": None, "sample_rate": 256 / 1437}),
        # A budget that is never reached does not stop the run early.
        TrainConfig.from_dict({**GROUPABLE, "epsilon_budget": 1000.0}),
    ]
    assert can_vectorize(configs) is None
    assert can_vectorize(configs[:1]) is None


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"model": "digits_cnn"}, "share model"),
        ({"epochs": 4}, "share epochs"),
        ({"batch_size": 128}, "share sample_rate"),
        ({"delta": 1e-6}, "share delta"),
        ({"accountant": "prv"}, "share accountant"),
        ({"max_physical_batch_size": 64}, "share max_physical_batch_size"),
        ({"test_batch_size": 100}, "share test_batch_size"),
        ({"optimizer": "adam"}, "optimizer='sgd'"),
        ({"optimizer": "rmsprop"}, "optimizer='sgd'"),
        ({"clipping": "per_layer"}, "clipping='flat'"),
        ({"disable_dp": True, "noise_multiplier": None}, "disable_dp=True"),
        ({"epsilon_budget": 5.0}, "stop at its epsilon_budget after"),  # ε = 6.1 after all 15 steps
        ({"ema_decay": 0.9}, "ema_decay=None"),  # the vectorised step keeps no parameter average
    ],
)
def test_configurations_that_cannot_train_together_are_refused_with_the_reason(change: dict, reason: str) -> None:
    configs = [TrainConfig.from_dict(GROUPABLE), TrainConfig.from_dict({**GROUPABLE, **change})]
    found = can_vectorize(configs)
    assert found is not None and reason in found
    assert "config 1" in found
    with pytest.raises(ConfigError, match="Cannot train these configurations together"):
        train_vectorized(configs, data=DIGITS)


def test_a_model_with_dropout_is_refused_naming_the_layers() -> None:
    configs = [
        TrainConfig.from_dict({**GROUPABLE, "dataset": "mnist", "model": "mnist_cnn", "seed": s}) for s in (0, 1)
    ]
    found = can_vectorize(configs)
    assert found is not None and "randomness" in found and "Dropout2d" in found and "Dropout)" in found


class _NoisyLayer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn_like(x)


def test_any_randomness_in_the_forward_pass_is_refused() -> None:
    def noisy_mlp(*, input_shape, num_classes, gn_groups):
        return nn.Sequential(nn.Flatten(), _NoisyLayer(), nn.Linear(64, num_classes))

    models.MODELS.register("noisy_mlp", noisy_mlp)
    try:
        found = can_vectorize([TrainConfig.from_dict({**GROUPABLE, "model": "noisy_mlp"})])
    finally:
        models.MODELS.unregister("noisy_mlp")
    assert found is not None and "vmap" in found and "random" in found


def test_can_vectorize_leaves_the_global_random_state_alone() -> None:
    before = torch.get_rng_state()
    assert can_vectorize([TrainConfig.from_dict(GROUPABLE)]) is None
    assert torch.equal(torch.get_rng_state(), before)
    assert can_vectorize([]) is not None
