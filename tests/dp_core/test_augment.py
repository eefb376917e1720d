"""Augmentation multiplicity (augmult): the views, the averaged-then-clipped gradient, its ε, training and resume."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

from dp_core import _bookkeeping, engines
from dp_core.augment import Augmentation, augmentation_for, augmented_views, default_padding
from dp_core.config import TrainConfig
from dp_core.dataset_facts import DATASETS
from dp_core.dataset_spec import DatasetSpec
from dp_core.dpsgd import PlainStep, make_private_step, per_layer_norms, poisson_batches
from dp_core.engines import ENGINES, choose_engine
from dp_core.errors import ConfigError
from dp_core.federated import split_flat
from dp_core.privacy_plan import plan_privacy
from dp_core.train import train
from dp_core.vectorized import can_vectorize
from tests.dp_core.test_engines import ZOO, _batch, _model
from tests.dp_core.test_train import DIGITS, FAST, _interrupted_then_resumed, _without_timings

AUGMULT_ENGINES = [name for name, engine in ENGINES.items() if engine.supports_augmult]
K = 3


def _views(seed: int, *, padding: int = 1, flip: bool = True) -> functools.partial:
    augmentation = Augmentation(views=K, padding=padding, horizontal_flip=flip)
    return functools.partial(augmented_views, augmentation=augmentation, generator=torch.Generator().manual_seed(seed))


def _naive_averaged(model: nn.Module, rows: torch.Tensor, y: torch.Tensor) -> list[list[torch.Tensor]]:
    """g_i = ∇ (1/K) Σ_k ℓ(view_k of x_i): one forward/backward per example over its K views."""
    params = [p for p in model.parameters() if p.requires_grad]
    per_example = []
    for i in range(len(y)):
        views = rows[i * K : (i + 1) * K]
        loss = nn.functional.cross_entropy(model(views), y[i].repeat(K))  # the mean over the K views
        per_example.append(list(torch.autograd.grad(loss, params)))
    return per_example


def _clipped_mean(per_example: list[list[torch.Tensor]], bounds: list[float], *, flat: bool) -> list[torch.Tensor]:
    """Σ_i clip(g_i) / B, each g_i clipped once (flat: over all parameters, else per tensor)."""
    total = [torch.zeros_like(g) for g in per_example[0]]
    for grads in per_example:
        if flat:
            norm = torch.sqrt(sum(g.square().sum() for g in grads)).item()
            factors = [min(1.0, bounds[0] / (norm + 1e-6))] * len(grads)
        else:
            factors = [min(1.0, c / (g.norm().item() + 1e-6)) for g, c in zip(grads, bounds)]
        for t, g, f in zip(total, grads, factors):
            t += f * g
    return [t / len(per_example) for t in total]


def _norms(per_example: list[list[torch.Tensor]]) -> torch.Tensor:
    return torch.stack([torch.sqrt(sum(g.square().sum() for g in grads)) for grads in per_example])


# ---- the views ---------------------------------------------------------------------------------


def test_views_are_reflect_padded_crops_example_major_and_seeded() -> None:
    images = torch.randn(4, 2, 6, 5)
    augmentation = Augmentation(views=K, padding=2, horizontal_flip=False)
    views = augmented_views(images, augmentation, generator=torch.Generator().manual_seed(0))
    assert views.shape == (4 * K, 2, 6, 5)
    padded = nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    crops = [[padded[i, :, t : t + 6, s : s + 5] for t in range(5) for s in range(5)] for i in range(4)]
    for row, view in enumerate(views):
        assert any(torch.equal(view, crop) for crop in crops[row // K])  # a crop of its own example
    assert not all(torch.equal(views[row], images[row // K]) for row in range(len(views)))  # not all centred
    again = augmented_views(images, augmentation, generator=torch.Generator().manual_seed(0))
    assert torch.equal(views, again)
    other = augmented_views(images, augmentation, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(views, other)


def test_flip_mirrors_some_views_only_where_allowed() -> None:
    images = torch.randn(32, 1, 4, 4)
    flipped = augmented_views(
        images, Augmentation(views=2, padding=0, horizontal_flip=True), generator=torch.Generator()
    )
    rows = images.repeat_interleave(2, dim=0)
    mirrored = torch.tensor([torch.equal(v, r.flip(-1)) for v, r in zip(flipped, rows)])
    kept = torch.tensor([torch.equal(v, r) for v, r in zip(flipped, rows)])
    assert bool((mirrored | kept).all()) and 0 < int(mirrored.sum()) < len(rows)
    plain = augmented_views(
        images, Augmentation(views=2, padding=0, horizontal_flip=False), generator=torch.Generator()
    )
    assert torch.equal(plain, rows)


def test_flip_is_the_datasets_to_allow_and_padding_scales_with_the_image() -> None:
    assert DATASETS.get("cifar10").horizontal_flip and DATASETS.get("synthetic_cifar10").horizontal_flip
    assert not any(DATASETS.get(name).horizontal_flip for name in ("digits", "mnist", "fashion_mnist"))
    assert [default_padding(side, side) for side in (32, 28, 8)] == [4, 3, 1]
    cifar = augmentation_for("cifar10", augmult=4, padding=None, input_shape=(3, 32, 32))
    assert cifar == Augmentation(views=4, padding=4, horizontal_flip=True)
    digits = augmentation_for("digits", augmult=2, padding=None, input_shape=(1, 8, 8))
    assert digits == Augmentation(views=2, padding=1, horizontal_flip=False)
    assert augmentation_for("digits", augmult=1, padding=None, input_shape=(1, 8, 8)) is None
    own = dict(format="npz", path="/data/x.npz")
    assert not augmentation_for(DatasetSpec(**own), augmult=2, padding=2, input_shape=(3, 8, 8)).horizontal_flip
    declared = DatasetSpec.from_mapping({**own, "horizontal_flip": True})
    assert augmentation_for(declared, augmult=2, padding=2, input_shape=(3, 8, 8)).horizontal_flip
    assert declared.to_mapping()["horizontal_flip"] is True
    assert "horizontal_flip" not in DatasetSpec(**own).to_mapping()  # undeclared specs map as before


# ---- the gradient: averaged over the views, clipped once ----------------------------------------


def _group_norm_model(name: str) -> nn.Module:
    """A conv, a GroupNorm (an instantiated layer for bk) and a linear layer: the zoo's deep models' layer types."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)
    )


SHAPES = {**ZOO, "group_norm": (3, 6, 6)}
# Every engine on a linear, a convolutional and a GroupNorm model; CIFAR's 3-channel CNN with strided convs on
# two (the naive loop over the zoo's deep models costs tens of seconds; the engines' own tests cover their layers).
CASES = [(engine, name) for engine in AUGMULT_ENGINES for name in ("mlp", "digits_cnn", "group_norm")] + [
    ("hooks", "cifar_cnn"),
    ("bk", "cifar_cnn"),
]


def _any_model(name: str) -> nn.Module:
    return _group_norm_model(name) if name == "group_norm" else _model(name)


@pytest.mark.parametrize(("engine", "name"), CASES)
def test_every_augmult_engine_clips_the_view_averaged_gradient_of_the_definition(name: str, engine: str) -> None:
    x, y = _batch(SHAPES[name], 5)
    rows = _views(seed=7)(x)
    per_example = _naive_averaged(_any_model(name), rows, y)
    bound = _norms(per_example).median().item()  # some examples clipped, some not
    model = _any_model(name)
    step = make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=bound,
        expected_batch_size=5,
        grad_sample_mode=engine,
        augmult=K,
        views=_views(seed=7),  # the same seed: the very views of the naive loop
    )
    step.backward(x, y)
    torch.testing.assert_close(step.per_sample_norms(), _norms(per_example), rtol=1e-4, atol=1e-6)
    step.optimizer.step()
    for p, expected in zip(model.parameters(), _clipped_mean(per_example, [bound], flat=True)):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("engine", AUGMULT_ENGINES)
def test_per_layer_clipping_clips_each_view_averaged_tensor(engine: str) -> None:
    x, y = _batch(ZOO["digits_cnn"], 4)
    rows = _views(seed=3)(x)
    reference = _model("digits_cnn")
    per_example = _naive_averaged(reference, rows, y)
    bounds = per_layer_norms(0.3, reference)
    model = _model("digits_cnn")
    step = make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=0.3,
        expected_batch_size=4,
        clipping="per_layer",
        grad_sample_mode=engine,
        augmult=K,
        views=_views(seed=3),
    )
    step.backward(x, y)
    step.optimizer.step()
    for p, expected in zip(model.parameters(), _clipped_mean(per_example, bounds, flat=False)):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("strategy", ["ghost_wide", "instantiate_unfold", "instantiate_grouped"])
@pytest.mark.parametrize("ghost_cheaper", [True, False])
def test_bk_conv_rules_sum_each_examples_views(strategy: str, ghost_cheaper: bool, monkeypatch) -> None:
    """bk's conv rule with K rows per example: g_i = Σ_k g_ik, its norm and Σ_i c_i g_i, by every way it takes."""
    monkeypatch.setattr(_bookkeeping, "_conv_strategy", lambda *args: strategy)
    monkeypatch.setattr(_bookkeeping, "_ghost_is_cheaper", lambda *args: ghost_cheaper)  # ghost: im2col or not
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3, stride=2, padding=1).double()
    a = torch.randn(4 * K, 3, 7, 6, dtype=torch.float64)
    b = torch.randn_like(layer(a))
    params = list(layer.parameters())
    per_row = [torch.autograd.grad(layer(a[r : r + 1]), params, b[r : r + 1]) for r in range(len(a))]
    per_example = [[sum(per_row[i * K + k][j] for k in range(K)) for j in range(len(params))] for i in range(4)]
    rules = _bookkeeping._conv2d(layer, (a,), b, K)
    factors = torch.rand(4, dtype=torch.float64)
    for j, p in enumerate(params):
        norms_sq, clipped_sum = rules[p]
        torch.testing.assert_close(norms_sq, torch.stack([g[j].square().sum() for g in per_example]))
        torch.testing.assert_close(clipped_sum(factors).view_as(p), sum(c * g[j] for c, g in zip(factors, per_example)))


@pytest.mark.parametrize("ghost_cheaper", [True, False])
def test_bk_linear_rule_takes_each_examples_views_as_positions(ghost_cheaper: bool, monkeypatch) -> None:
    monkeypatch.setattr(_bookkeeping, "_ghost_is_cheaper", lambda *args: ghost_cheaper)
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).double()
    a = torch.randn(4 * K, 2, 5, dtype=torch.float64)  # two positions per row
    b = torch.randn(4 * K, 2, 3, dtype=torch.float64)
    params = list(layer.parameters())
    per_row = [torch.autograd.grad(layer(a[r : r + 1]), params, b[r : r + 1]) for r in range(len(a))]
    per_example = [[sum(per_row[i * K + k][j] for k in range(K)) for j in range(len(params))] for i in range(4)]
    rules = _bookkeeping._linear(layer, (a,), b, K)
    factors = torch.rand(4, dtype=torch.float64)
    for j, p in enumerate(params):
        norms_sq, clipped_sum = rules[p]
        torch.testing.assert_close(norms_sq, torch.stack([g[j].square().sum() for g in per_example]))
        torch.testing.assert_close(clipped_sum(factors).view_as(p), sum(c * g[j] for c, g in zip(factors, per_example)))


def _shifted_views(images: torch.Tensor) -> torch.Tensor:
    """K views that depend on each image only (not on a stream), so any split into chunks draws the same."""
    return torch.stack([images.roll(k, dims=-1) for k in range(K)], dim=1).flatten(0, 1)


@pytest.mark.parametrize("engine", ["hooks", "bk"])
def test_virtual_batches_with_augmult_equal_one_physical_batch(engine: str) -> None:
    x, y = _batch((1, 8, 8), 40)
    results = []
    for max_physical in (None, 7):
        model = _model("digits_cnn")
        step = make_private_step(
            model,
            torch.optim.SGD(model.parameters(), lr=0.5),
            noise_multiplier=0.7,
            max_grad_norm=0.5,
            expected_batch_size=12,
            grad_sample_mode=engine,
            noise_generator=torch.Generator().manual_seed(5),
            augmult=K,
            views=_shifted_views,
        )
        for indices, _ in poisson_batches(
            num_examples=40,
            sample_rate=0.3,
            steps=3,
            generator=torch.Generator().manual_seed(9),
            max_physical_batch_size=max_physical,
            optimizer=step.optimizer,
        ):
            step.backward(x[indices], y[indices])
            step.optimizer.step()
            step.optimizer.zero_grad(set_to_none=True)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_ghost_refuses_augmult_by_name_and_auto_skips_it(monkeypatch) -> None:
    assert set(AUGMULT_ENGINES) == {"hooks", "functorch", "ew", "bk"}
    model = _model("digits_cnn")
    with pytest.raises(ConfigError, match=r"grad_sample_mode='ghost'(.|\n)*augmult=2"):
        choose_engine(model, grad_sample_mode="ghost", augmult=2)
    with pytest.raises(ConfigError, match="grad_sample_mode='ghost' with augmult=2"):
        TrainConfig.from_dict({"noise_multiplier": 1.0, "grad_sample_mode": "ghost", "augmult": 2})
    assert TrainConfig.from_dict({"disable_dp": True, "grad_sample_mode": "ghost", "augmult": 2}).data.augmult == 2
    assert choose_engine(model, augmult=2).name == "bk"
    monkeypatch.setattr(engines, "AUTO_ORDER", ("ghost", "hooks"))
    assert choose_engine(model).name == "ghost"
    assert choose_engine(model, augmult=2).name == "hooks"


# ---- privacy: the same ε ------------------------------------------------------------------------


@pytest.mark.parametrize("privacy", [{"noise_multiplier": 1.1}, {"target_epsilon": 2.0}])
def test_augmult_leaves_sigma_and_epsilon_unchanged(privacy: dict) -> None:
    base = TrainConfig.from_dict({**FAST, **privacy, "accountant": "rdp"})
    plans = [plan_privacy(base.replace(augmult=k), train_size=len(DIGITS.train)) for k in (1, 4)]
    assert plans[0].noise_multiplier == plans[1].noise_multiplier
    assert plans[0].sample_rate == plans[1].sample_rate and plans[0].max_steps == plans[1].max_steps
    assert [plans[0].epsilon_at(s) for s in (1, 5, 15)] == [plans[1].epsilon_at(s) for s in (1, 5, 15)]


# ---- training ----------------------------------------------------------------------------------

AUGMULT = {**FAST, "epochs": 2, "noise_multiplier": 1.0, "augmult": 2}


def test_training_with_augmult_is_reproducible_reports_the_same_epsilon_and_differs_from_without() -> None:
    config = TrainConfig.from_dict({**AUGMULT, "epochs": 1, "max_physical_batch_size": 96})
    first, second = train(config, data=DIGITS), train(config, data=DIGITS)
    assert _without_timings(first) == _without_timings(second)
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)
    without = train(config.replace(augmult=1), data=DIGITS)
    assert [r.epsilon for r in first.reports] == [r.epsilon for r in without.reports]
    assert not torch.equal(next(first.model.parameters()), next(without.model.parameters()))


def test_the_non_private_step_takes_the_mean_loss_over_each_examples_views() -> None:
    x, y = _batch(ZOO["digits_cnn"], 4)
    per_example = _naive_averaged(_model("digits_cnn"), _views(seed=2)(x), y)
    model = _model("digits_cnn")
    step = PlainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), augmult=K, views=_views(seed=2))
    step.backward(x, y)
    for p, *grads in zip(model.parameters(), *per_example):
        torch.testing.assert_close(p.grad, sum(grads) / len(grads), rtol=1e-4, atol=1e-6)
    config = TrainConfig.from_dict({**AUGMULT, "epochs": 1, "disable_dp": True})
    assert train(config, data=DIGITS).final.epsilon == float("inf")  # and the trainer runs it


def test_resumed_run_with_augmult_draws_the_same_views(tmp_path: Path) -> None:
    config = TrainConfig.from_dict(AUGMULT)
    uninterrupted = train(config, data=DIGITS)
    checkpoint = tmp_path / "state.pt"
    resumed = _interrupted_then_resumed(config, checkpoint, DIGITS)
    assert torch.load(checkpoint, weights_only=False)["augment_rng"] is not None
    assert _without_timings(resumed) == _without_timings(uninterrupted)
    for a, b in zip(resumed.model.parameters(), uninterrupted.model.parameters(), strict=True):
        assert torch.equal(a, b)


# ---- validation at the edge ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_augmult_is_an_integer_at_least_one(value: object) -> None:
    with pytest.raises(ConfigError, match="Expected augmult to be an integer >= 1"):
        TrainConfig.from_dict({"noise_multiplier": 1.0, "augmult": value})
    assert TrainConfig.from_dict({"noise_multiplier": 1.0}).data.augmult == 1
    with pytest.raises(ConfigError, match="augment_padding"):
        TrainConfig.from_dict({"noise_multiplier": 1.0, "augment_padding": -1})


def test_augmult_on_tabular_data_is_refused() -> None:
    tabular = {"format": "csv", "path": "/data/table.csv", "label": "y", "test_fraction": 0.2}
    with pytest.raises(ConfigError, match="augmult to be 1 on tabular data"):
        TrainConfig.from_dict({"noise_multiplier": 1.0, "dataset": tabular, "augmult": 2})
    assert TrainConfig.from_dict({"noise_multiplier": 1.0, "dataset": tabular}).data.augmult == 1
    # An npz or a loader may hold either: its shape decides once it is read.
    with pytest.raises(ConfigError, match=r"images \(channels, height, width\) with augmult > 1"):
        augmentation_for(DatasetSpec(format="npz", path="/data/x.npz"), augmult=2, padding=None, input_shape=(30,))
    with pytest.raises(ConfigError, match="augment_padding to be smaller than the images' sides"):
        augmentation_for("digits", augmult=2, padding=8, input_shape=(1, 8, 8))


def test_trainers_without_views_refuse_augmult() -> None:
    config = TrainConfig.from_dict({**FAST, "noise_multiplier": 1.0, "augmult": 2})
    assert "augmult" in can_vectorize([config], data=DIGITS)
    assert can_vectorize([config.replace(augmult=1)], data=DIGITS) is None
    with pytest.raises(ConfigError, match="augmult=1 in a federated run"):
        split_flat({"kind": "federated", "noise_multiplier": 1.0, "augmult": 2})
