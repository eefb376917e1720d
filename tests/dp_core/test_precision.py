"""Mixed precision keeps DP-SGD exact: under bf16 autocast (real on CPU) every engine clips, sums and
noises in float32, so each example's clipped gradient has norm <= C in float32 arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dp_core.config import TrainConfig
from dp_core.dpsgd import make_private_step, per_layer_norms
from dp_core.engines import choose_engine
from dp_core.errors import ConfigError
from dp_core.precision import Precision, float32_bookkeeping, resolve_precision, upcast
from dp_core.train import train
from dp_core.vectorized import can_vectorize

BF16 = Precision(name="bf16", device_type="cpu")
FP32 = Precision(name="fp32", device_type="cpu")
# Engines that keep DP exact under bf16; ghost refuses it (test below).
BF16_ENGINES = ["hooks", "functorch", "ew", "bk"]
# Float32 rounding of a norm over a few thousand coordinates is ~1e-6 relative; bf16 rounding is
# 2^-9 ≈ 2e-3. A clipped norm may exceed C by the former, never by the latter.
FLOAT32_SLACK = 1e-5


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 10),
    )  # fmt: skip


MODELS = {"mlp": _mlp, "cnn": _cnn}


def _batch(size: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 1, 8, 8, generator=generator), torch.randint(0, 10, (size,), generator=generator)


def _step(engine: str, model: nn.Module, *, max_grad_norm: float, noise_multiplier: float = 0.0, **kwargs):
    return make_private_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),  # lr 0: the weights stay put between steps
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=8,
        grad_sample_mode=engine,
        noise_generator=torch.Generator().manual_seed(7),
        **kwargs,
    )


def _take(step, precision: Precision, images: torch.Tensor, labels: torch.Tensor) -> list[nn.Parameter]:
    """One DP-SGD step as dp_core.train runs it; the parameters, whose summed_grad and grad it leaves."""
    with precision.training():
        step.backward(images, labels)
    step.optimizer.step()
    return list(step.optimizer.params)


def _f64_norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(t.double().square().sum().item() for t in tensors))


# ---------------------------------------------------------------------------------------------- resolving


def test_auto_is_fp32_on_a_cpu_and_tf32_is_refused_there() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == FP32
    assert resolve_precision("bf16", cpu) == BF16
    with pytest.raises(ConfigError, match=r"Expected precision=tf32 on a CUDA device.*precision='tf32'.*fp32 or auto"):
        resolve_precision("tf32", cpu)
    with pytest.raises(ConfigError, match="Expected precision to be one of"):
        resolve_precision("fp16", cpu)


def test_config_takes_precision_as_a_flat_key_and_refuses_others() -> None:
    config = TrainConfig.from_dict({"precision": "bf16", "noise_multiplier": 1.0})
    assert config.precision == "bf16" and TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig().precision == "auto"
    with pytest.raises(ConfigError, match=r"Expected precision to be one of auto, bf16, fp32, tf32, but got .*'fp16'"):
        TrainConfig.from_dict({"precision": "fp16"})


def test_bf16_autocasts_the_step_and_float32_bookkeeping_undoes_it_inside() -> None:
    layer = nn.Linear(4, 4)
    with BF16.training():
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
        with float32_bookkeeping():
            assert layer(torch.randn(2, 4)).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu") and layer(torch.randn(2, 4)).dtype == torch.float32
    assert upcast(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert upcast(torch.ones(2, dtype=torch.float64)).dtype == torch.float64


def test_tf32_is_scoped_to_the_step_and_off_for_the_bookkeeping() -> None:
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with pytest.raises(KeyError), Precision(name="tf32", device_type="cuda").training():
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with float32_bookkeeping():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32
        raise KeyError("restored even when the step fails")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


# ---------------------------------------------------------------------------------------------- every engine


@pytest.mark.parametrize("engine", BF16_ENGINES)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_under_bf16_each_clipped_example_has_norm_at_most_c_in_float32(engine: str, model_name: str) -> None:
    # A batch of one example: the clipped sum *is* that example's clipped gradient. C is far below
    # every norm, so every example is clipped and a norm rounded down (bf16) would show above C.
    max_grad_norm = 1e-3
    model = MODELS[model_name]()
    step = _step(engine, model, max_grad_norm=max_grad_norm)
    images, labels = _batch(12)
    excess = []
    for i in range(len(images)):
        params = _take(step, BF16, images[i : i + 1], labels[i : i + 1])
        assert all(p.summed_grad.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params)
        excess.append(_f64_norm([p.summed_grad for p in params]) / max_grad_norm - 1)
        step.optimizer.zero_grad(set_to_none=True)
    assert max(excess) <= FLOAT32_SLACK
    assert min(excess) > -1e-3  # clipped to C, not below it


@pytest.mark.parametrize("engine", ["hooks", "bk"])
def test_under_bf16_per_layer_clipping_bounds_each_tensor_in_float32(engine: str) -> None:
    model = _cnn()
    bounds = per_layer_norms(1e-3, model)
    step = _step(engine, model, max_grad_norm=1e-3, clipping="per_layer")
    images, labels = _batch(6)
    for i in range(len(images)):
        params = _take(step, BF16, images[i : i + 1], labels[i : i + 1])
        assert all(_f64_norm([p.summed_grad]) <= c * (1 + FLOAT32_SLACK) for p, c in zip(params, bounds))
        step.optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("engine", ["hooks", "functorch", "ew"])
def test_under_bf16_the_clipped_sum_is_the_float32_sum_of_the_clipped_examples(engine: str) -> None:
    # Engines that keep g_i: the batch's clipped sum against Σ_i min(1, C/‖g_i‖) g_i recomputed in
    # float64 from those same g_i. A sum rounded to bf16 would be off by ~2^-9.
    max_grad_norm = 2.0  # the CNN's per-example norms lie around it on this batch
    model = _cnn()
    step = _step(engine, model, max_grad_norm=max_grad_norm)
    images, labels = _batch(8)
    with BF16.training():
        step.backward(images, labels)
    samples = [g.double() for g in step.per_sample_gradients()]
    assert all(g.dtype == torch.float64 for g in samples) and step.per_sample_norms().dtype == torch.float32
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in samples], dim=1).norm(dim=1)
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    assert (factors < 1).any() and (factors == 1).any()  # some examples clipped, others not
    step.optimizer.step()
    for p, g in zip(step.optimizer.params, samples):
        expected = torch.einsum("i,i...->...", factors, g)
        assert ((p.summed_grad.double() - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.parametrize("engine", BF16_ENGINES)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_a_bf16_step_agrees_with_the_fp32_step(engine: str, model_name: str) -> None:
    # Same weights, batch and noise seed. bf16 keeps 8 significant bits, so the forward, the backward
    # and hence each g_i are off by ~0.4 % per layer: the clipped sums agree within 5 % (relative L2),
    # and differ at all (autocast is really on).
    images, labels = _batch(8)
    sums = {}
    for precision in (FP32, BF16):
        step = _step(engine, MODELS[model_name](), max_grad_norm=0.05, noise_multiplier=0.0)
        sums[precision.name] = torch.cat([p.summed_grad.flatten() for p in _take(step, precision, images, labels)])
    difference = ((sums["bf16"] - sums["fp32"]).norm() / sums["fp32"].norm()).item()
    assert 1e-6 < difference < 5e-2


@pytest.mark.parametrize("engine", BF16_ENGINES)
def test_under_bf16_the_noise_is_float32_with_std_sigma_c(engine: str) -> None:
    # noise = grad·qN - clipped sum over every coordinate of the CNN and the MLP (~2,900 together);
    # the sample std of n Gaussians is off by ~1/√(2n) ≈ 1.3 %: 6 % is over four standard errors.
    noise_multiplier, max_grad_norm = 1.5, 0.2
    noise = []
    for build in MODELS.values():
        step = _step(engine, build(), max_grad_norm=max_grad_norm, noise_multiplier=noise_multiplier)
        for p in _take(step, BF16, *_batch(8)):
            assert p.grad.dtype == p.summed_grad.dtype == torch.float32
            noise.append((p.grad * 8 - p.summed_grad).flatten())
    drawn = torch.cat(noise)
    assert drawn.numel() > 2500
    assert abs(drawn.std().item() / (noise_multiplier * max_grad_norm) - 1) < 0.06
    assert abs(drawn.mean().item()) < 4 * noise_multiplier * max_grad_norm / math.sqrt(drawn.numel())


def test_ghost_refuses_bf16_and_auto_picks_an_engine_that_keeps_dp_exact() -> None:
    with pytest.raises(ConfigError, match=r"(?s)precision='bf16'.*ghost.*rounded to bf16 after summing"):
        _step("ghost", _mlp(), max_grad_norm=1.0, precision="bf16")
    assert choose_engine(_mlp(), precision="bf16").name == "bk"
    # Driven under autocast without being told (make_private_step's default is fp32), it refuses to run.
    step = _step("ghost", _mlp(), max_grad_norm=1.0)
    with pytest.raises(RuntimeError, match="ghost.*float32"), BF16.training():
        step.backward(*_batch(4))


# ---------------------------------------------------------------------------------------------- train


def test_a_short_bf16_training_run_on_digits_learns() -> None:
    config = TrainConfig.from_dict(
        {"dataset": "digits", "model": "mlp", "epochs": 1, "batch_size": 128, "lr": 2.0,
         "noise_multiplier": 1.0, "max_grad_norm": 0.5, "seed": 0, "device": "cpu", "precision": "bf16"}
    )  # fmt: skip
    result = train(config)
    assert result.config.precision == "bf16" and result.final.test_accuracy > 0.3
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    with pytest.raises(ConfigError, match="precision=tf32"):
        train(config.replace(precision="tf32"))


def test_packs_train_in_float32_and_refuse_bf16_with_the_reason() -> None:
    base = {"dataset": "digits", "model": "mlp", "epochs": 1, "noise_multiplier": 1.0, "device": "cpu"}
    configs = [TrainConfig.from_dict({**base, "precision": "bf16", "lr": lr}) for lr in (0.5, 1.0)]
    reason = can_vectorize(configs)
    assert reason is not None and "precision='bf16'" in reason and "float32" in reason
    assert can_vectorize([TrainConfig.from_dict({**base, "lr": lr}) for lr in (0.5, 1.0)]) is None
