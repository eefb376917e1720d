"""Every per-sample gradient engine against DP-SGD's definition, computed one example at a time."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dp_core import _bookkeeping
from dp_core.config import TrainConfig
from dp_core.data import load_dataset
from dp_core.dpsgd import make_private, make_private_step, per_layer_norms, poisson_batches
from dp_core.engines import AUTO_ORDER, ENGINES, choose_engine
from dp_core.errors import ConfigError
from dp_core.models import build_model
from dp_core.train import train

# Small inputs keep the naive loop fast; every model keeps its layer types (GroupNorm, strided convs, ...).
ZOO = {
    "mlp": (1, 8, 8), "digits_cnn": (1, 8, 8), "mnist_cnn": (1, 28, 28),
    "cifar_cnn": (3, 16, 16), "resnet18_gn": (3, 16, 16), "wrn16_4": (3, 8, 8), "tabular_mlp": (30,),
}  # fmt: skip


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, input_shape=ZOO[name], num_classes=10)
    for module in model.modules():  # one dropout mask per batch cannot match the per-example loop
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
    return model


def _batch(shape: tuple[int, ...], size: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, *shape, generator=generator), torch.randint(0, 10, (size,), generator=generator)


def _naive(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[list[torch.Tensor]]:
    """g_i for every example i, straight from the definition (one forward/backward each)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        list(torch.autograd.grad(nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params))
        for i in range(len(x))
    ]


def _clipped_mean(per_example: list[list[torch.Tensor]], bounds: list[float], *, flat: bool) -> list[torch.Tensor]:
    total = [torch.zeros_like(g) for g in per_example[0]]
    for grads in per_example:
        if flat:
            norm = torch.sqrt(sum(g.square().sum() for g in grads))
            factors = [min(1.0, bounds[0] / (norm.item() + 1e-6))] * len(grads)
        else:
            factors = [min(1.0, c / (g.norm().item() + 1e-6)) for g, c in zip(grads, bounds)]
        for t, g, f in zip(total, grads, factors):
            t += f * g
    return [t / len(per_example) for t in total]


def _norms(per_example: list[list[torch.Tensor]]) -> torch.Tensor:
    return torch.stack([torch.sqrt(sum(g.square().sum() for g in grads)) for grads in per_example])


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("name", list(ZOO))
def test_every_engine_takes_the_noiseless_clipped_step_of_the_definition(name: str, engine: str) -> None:
    x, y = _batch(ZOO[name], 5)
    per_example = _naive(_model(name), x, y)
    bound = _norms(per_example).median().item()  # some examples clipped, some not
    model = _model(name)
    step = make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=bound,
        expected_batch_size=5,
        grad_sample_mode=engine,
    )
    step.backward(x, y)
    torch.testing.assert_close(step.per_sample_norms(), _norms(per_example), rtol=1e-4, atol=1e-6)
    step.optimizer.step()
    for p, expected in zip(model.parameters(), _clipped_mean(per_example, [bound], flat=True)):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)


def _tiny_wrn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("wrn", input_shape=(3, 8, 8), num_classes=10, model_kwargs={"depth": 10, "width": 1})


@pytest.mark.parametrize("engine", list(ENGINES))
def test_every_engine_sees_through_weight_standardisation_or_refuses_it(engine: str) -> None:
    """g_i w.r.t. the raw weight and gain of every WSConv2d, not w.r.t. the standardised weight that
    the layer convolves with: engines that cannot tell must refuse the model, never compute the latter."""
    x, y = _batch((3, 8, 8), 5)
    per_example = _naive(_tiny_wrn(), x, y)
    bound = _norms(per_example).median().item()
    model = _tiny_wrn()
    settings = {"noise_multiplier": 0.0, "max_grad_norm": bound, "expected_batch_size": 5}
    if engine == "ew":
        with pytest.raises(ConfigError, match=r"WSConv2d\): ExpandedWeights has no rule"):
            make_private_step(model, torch.optim.SGD(model.parameters(), lr=0.0), grad_sample_mode=engine, **settings)
        return
    step = make_private_step(model, torch.optim.SGD(model.parameters(), lr=0.0), grad_sample_mode=engine, **settings)
    step.backward(x, y)
    torch.testing.assert_close(step.per_sample_norms(), _norms(per_example), rtol=1e-4, atol=1e-6)
    step.optimizer.step()
    for p, expected in zip(model.parameters(), _clipped_mean(per_example, [bound], flat=True), strict=True):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)


def test_auto_trains_the_weight_standardised_wrn_with_bk() -> None:
    assert choose_engine(_tiny_wrn()).name == "bk"


@pytest.mark.parametrize("name", list(ZOO))
def test_bk_per_layer_clipping_is_the_definition(name: str) -> None:
    x, y = _batch(ZOO[name], 4)
    reference = _model(name)
    per_example = _naive(reference, x, y)
    bounds = per_layer_norms(0.3, reference)
    model = _model(name)
    step = make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=0.3,
        expected_batch_size=4,
        clipping="per_layer",
        grad_sample_mode="bk",
    )
    step.backward(x, y)
    step.optimizer.step()
    for p, expected in zip(model.parameters(), _clipped_mean(per_example, bounds, flat=False)):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-7)


_CONVS = [
    {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1},
    {"in_channels": 5, "out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1},
    {"in_channels": 4, "out_channels": 3, "kernel_size": 7, "stride": 2, "padding": 3, "bias": False},
    {"in_channels": 6, "out_channels": 8, "kernel_size": 1, "stride": 2},
    {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 2, "dilation": 2},
    {
        "in_channels": 2,
        "out_channels": 3,
        "kernel_size": (3, 2),
        "stride": (2, 1),
        "padding": (1, 0),
        "dilation": (1, 2),
    },
    {"in_channels": 2, "out_channels": 3, "kernel_size": 5, "stride": 3},
]


@pytest.mark.parametrize("strategy", ["ghost_wide", "ghost_unfold", "instantiate_unfold", "instantiate_grouped"])
@pytest.mark.parametrize("conv", _CONVS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_every_conv_strategy_gives_per_example_norms_and_clipped_sums(strategy: str, conv: dict, monkeypatch) -> None:
    monkeypatch.setattr(_bookkeeping, "_conv_strategy", lambda *args: strategy)
    torch.manual_seed(0)
    layer = nn.Conv2d(**conv).double()
    a = torch.randn(4, conv["in_channels"], 11, 10, dtype=torch.float64)
    b = torch.randn_like(layer(a))
    params = [p for p in layer.parameters()]
    per_example = [torch.autograd.grad(layer(a[i : i + 1]), params, b[i : i + 1]) for i in range(len(a))]
    rules = _bookkeeping._conv2d(layer, (a,), b)
    factors = torch.rand(len(a), dtype=torch.float64)
    for k, p in enumerate(params):
        norms_sq, clipped_sum = rules[p]
        torch.testing.assert_close(norms_sq, torch.stack([g[k].square().sum() for g in per_example]))
        torch.testing.assert_close(clipped_sum(factors).view_as(p), sum(c * g[k] for c, g in zip(factors, per_example)))


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 10))


@pytest.mark.parametrize("engine", ["bk", "ghost", "ew", "functorch"])
def test_noise_is_added_once_exactly_as_the_hooks_engine_adds_it(engine: str) -> None:
    """Same noise stream, same clipped sum: every engine's noisy step equals Opacus' hooks step,
    whose noise (std σC per coordinate, once per logical batch) test_dpsgd checks statistically."""
    x, y = _batch((1, 8, 8), 16)
    grads = []
    for mode in ("hooks", engine):
        model = _linear_model()
        step = make_private_step(
            model,
            torch.optim.SGD(model.parameters(), lr=1.0),
            noise_multiplier=1.3,
            max_grad_norm=0.7,
            expected_batch_size=12,
            grad_sample_mode=mode,
            noise_generator=torch.Generator().manual_seed(4),
        )
        step.backward(x, y)
        step.optimizer.step()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bk_noise_has_std_sigma_c_over_expected_batch() -> None:
    x, y = _batch((1, 8, 8), 8)
    clean = _clipped_mean(_naive(_linear_model(), x, y), [0.4], flat=True)
    model = _linear_model()
    step = make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=2.0,
        max_grad_norm=0.4,
        expected_batch_size=8,
        grad_sample_mode="bk",
        noise_generator=torch.Generator().manual_seed(3),
    )
    step.backward(x, y)
    step.optimizer.step()
    noise = torch.cat([(p.grad - c).flatten() for p, c in zip(model.parameters(), clean)])
    assert noise.std().item() == pytest.approx(2.0 * 0.4 / 8, rel=0.05)
    assert abs(noise.mean().item()) < 4 * noise.std().item() / math.sqrt(len(noise))


@pytest.mark.parametrize("engine", list(ENGINES))
def test_an_empty_batch_is_a_step_of_pure_noise(engine: str) -> None:
    model = _linear_model()
    before = [p.detach().clone() for p in model.parameters()]
    step = make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=4,
        grad_sample_mode=engine,
        noise_generator=torch.Generator().manual_seed(0),
    )
    x, y = _batch((1, 8, 8), 0)
    assert step.backward(x, y).item() == 0.0
    step.optimizer.step()
    generator = torch.Generator().manual_seed(0)  # DPOptimizer draws N(0, σC) per parameter, in order
    expected = [torch.normal(0.0, 1.0, p.shape, generator=generator) / 4 for p in before]
    for p, b, e in zip(model.parameters(), before, expected):
        torch.testing.assert_close(b - p.detach(), e)


@pytest.mark.parametrize("engine", ["bk", "ghost", "hooks"])
def test_virtual_batches_equal_one_physical_batch(engine: str) -> None:
    x, y = _batch((1, 8, 8), 40)
    results = []
    for max_physical in (None, 7):
        model = _linear_model()
        step = make_private_step(
            model,
            torch.optim.SGD(model.parameters(), lr=0.5),
            noise_multiplier=0.7,
            max_grad_norm=0.5,
            expected_batch_size=12,
            grad_sample_mode=engine,
            noise_generator=torch.Generator().manual_seed(5),
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


def test_bk_works_in_eval_mode_and_leaves_no_hooks_behind() -> None:
    x, y = _batch(ZOO["mnist_cnn"], 4)
    per_example = _naive(_model("mnist_cnn"), x, y)
    model = _model("mnist_cnn").eval()
    step = make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=1e6,
        expected_batch_size=4,
        grad_sample_mode="bk",
    )
    step.backward(x, y)
    torch.testing.assert_close(step.per_sample_norms(), _norms(per_example), rtol=1e-4, atol=1e-6)
    assert not any(m._forward_hooks for m in model.modules())
    with torch.no_grad():
        model(x)  # plain evaluation: nothing is recorded


def test_a_plain_backward_cannot_drive_an_engine_that_clips_in_backward() -> None:
    """bk's optimizer would otherwise add noise to unclipped gradients: it refuses to step."""
    model = _linear_model()
    step = make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=4,
        grad_sample_mode="bk",
    )
    x, y = _batch((1, 8, 8), 4)
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="PrivateStep.backward"):
        step.optimizer.step()
    with pytest.raises(ConfigError, match="clips during its own backward"):
        make_private(
            _linear_model(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=4,
            grad_sample_mode="bk",
        )


def test_make_private_with_auto_picks_an_engine_that_clips_in_the_optimizer() -> None:
    model = _linear_model()
    private_model, _ = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=4,
        grad_sample_mode="auto",
    )
    assert type(private_model).__name__ == "GradSampleModule"


class _Scale(nn.Module):
    """A layer with its own parameter and no per-sample gradient rule in Opacus (functorch handles it)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_auto_is_bk_on_the_zoo_and_hooks_where_bk_cannot_clip() -> None:
    assert AUTO_ORDER[0] == "bk"
    for name in ZOO:
        assert choose_engine(_model(name)).name == "bk"
    custom = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), _Scale())
    assert _bookkeeping.unsupported_layers(custom)
    assert choose_engine(custom).name == "hooks"
    with pytest.raises(ConfigError, match="no per-example gradient rule"):
        choose_engine(custom, grad_sample_mode="bk")


def test_ghost_refuses_per_layer_clipping_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="flat clipping only"):
        choose_engine(_linear_model(), grad_sample_mode="ghost", clipping="per_layer")
    assert choose_engine(_linear_model(), clipping="per_layer").name == "bk"


def test_bk_refuses_weight_tying_layer_reuse_and_in_place_outputs() -> None:
    first, second = nn.Linear(10, 10), nn.Linear(10, 10)
    second.weight = first.weight
    assert "weight tying" in " ".join(_bookkeeping.unsupported_layers(nn.Sequential(first, nn.ReLU(), second)))

    shared = nn.Linear(64, 64)
    reused = nn.Sequential(nn.Flatten(), shared, nn.ReLU(), shared)
    clipper = _bookkeeping.BookkeepingClipper(reused, max_grad_norms={p: 1.0 for p in reused.parameters()}, flat=True)
    with pytest.raises(RuntimeError, match="ran twice"):
        clipper.backward(torch.randn(3, 1, 8, 8), torch.randint(0, 10, (3,)))

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1)).relu_()

    model = InPlace()
    clipper = _bookkeeping.BookkeepingClipper(model, max_grad_norms={p: 1.0 for p in model.parameters()}, flat=True)
    with pytest.raises(RuntimeError, match="modified in place"):
        clipper.backward(*_batch((1, 8, 8), 3))


def test_config_accepts_every_engine_and_defaults_to_auto() -> None:
    assert set(ENGINES) == {"hooks", "functorch", "ew", "ghost", "bk"}
    for mode in ("auto", *ENGINES):
        assert (
            TrainConfig.from_dict({"noise_multiplier": 1.0, "grad_sample_mode": mode}).privacy.grad_sample_mode == mode
        )
    assert TrainConfig.from_dict({"noise_multiplier": 1.0}).privacy.grad_sample_mode == "auto"


def test_training_with_bk_equals_training_with_hooks() -> None:
    """Same seed, same noise stream, same clipped sums: the engines train the same model."""
    digits = load_dataset("digits")
    settings = {
        "model": "digits_cnn",
        "epochs": 1,
        "batch_size": 128,
        "lr": 1.0,
        "max_grad_norm": 0.5,
        "noise_multiplier": 1.0,
        "max_physical_batch_size": 48,
    }
    results = {
        mode: train(TrainConfig.from_dict({**settings, "grad_sample_mode": mode}), data=digits)
        for mode in ("hooks", "bk")
    }
    assert results["bk"].final.test_loss == pytest.approx(results["hooks"].final.test_loss, rel=1e-4)
    for a, b in zip(results["bk"].model.parameters(), results["hooks"].model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
