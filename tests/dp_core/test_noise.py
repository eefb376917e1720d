"""The one Gaussian-noise helper: std σ·C, float32, the run's generator, and every engine draws from it."""

from __future__ import annotations

import pytest
import torch
from opacus.optimizers.optimizer import _generate_noise

from dp_core import _vectorized_stack, engines
from dp_core.config import TrainConfig
from dp_core.data import load_dataset
from dp_core.noise import gaussian_noise
from dp_core.train import train
from dp_core.vectorized import train_vectorized


@pytest.mark.parametrize(("sigma", "bound"), [(1.3, 0.7), (0.5, 4.0)])
def test_std_is_noise_multiplier_times_sensitivity(sigma: float, bound: float) -> None:
    generator = torch.Generator().manual_seed(0)
    noise = gaussian_noise(noise_multiplier=sigma, sensitivity=bound, like=torch.zeros(400_000), generator=generator)
    # 400k draws: the sample std is within 0.5% of the true one with overwhelming probability.
    assert noise.std().item() == pytest.approx(sigma * bound, rel=5e-3)
    assert abs(noise.mean().item()) < 0.01 * sigma * bound


def test_same_generator_state_same_noise_and_the_stream_moves_on() -> None:
    def draw(generator: torch.Generator) -> torch.Tensor:
        return gaussian_noise(noise_multiplier=1.0, sensitivity=1.0, like=torch.zeros(3, 4), generator=generator)

    first, again = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = draw(first)
    assert torch.equal(a, draw(again))
    assert not torch.equal(a, draw(first))  # the next draw continues the stream


def test_it_draws_what_opacus_draws_bit_for_bit() -> None:
    like = torch.zeros(5, 6)
    ours = gaussian_noise(noise_multiplier=1.1, sensitivity=0.3, like=like, generator=torch.Generator().manual_seed(1))
    theirs = _generate_noise(std=1.1 * 0.3, reference=like, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.float32])
def test_noise_is_float32_with_the_shape_of_the_sum(dtype: torch.dtype) -> None:
    like = torch.zeros(2, 3, dtype=dtype)
    noise = gaussian_noise(noise_multiplier=1.0, sensitivity=1.0, like=like, generator=torch.Generator())
    assert noise.dtype == torch.float32 and noise.shape == like.shape and noise.device == like.device


def test_zero_std_draws_nothing() -> None:
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    noise = gaussian_noise(noise_multiplier=0.0, sensitivity=1.0, like=torch.ones(4), generator=generator)
    assert torch.equal(noise, torch.zeros(4)) and torch.equal(generator.get_state(), state)


def _recording(monkeypatch: pytest.MonkeyPatch, module: object) -> list[float]:
    stds: list[float] = []

    def recorded(**kwargs):  # type: ignore[no-untyped-def]
        stds.append(kwargs["noise_multiplier"] * kwargs["sensitivity"])
        return gaussian_noise(**kwargs)

    monkeypatch.setattr(module, "gaussian_noise", recorded)
    return stds


SETTINGS = {"model": "mlp", "epochs": 1, "batch_size": 256, "noise_multiplier": 0.8, "max_grad_norm": 0.5}


@pytest.mark.parametrize("engine", list(engines.ENGINES))
def test_every_engine_noises_with_the_helper(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stds = _recording(monkeypatch, engines)
    result = train(
        TrainConfig.from_dict({**SETTINGS, "grad_sample_mode": engine}),
        data=load_dataset("digits"),
        evaluate_test=False,
    )
    parameters = sum(1 for _ in result.model.parameters())
    assert len(stds) == result.final.steps * parameters and set(stds) == {0.8 * 0.5}


def test_vectorized_packs_noise_with_the_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    stds = _recording(monkeypatch, _vectorized_stack)
    configs = [TrainConfig.from_dict({**SETTINGS, "max_grad_norm": bound}) for bound in (0.5, 1.0)]
    results = train_vectorized(configs, data=load_dataset("digits"), evaluate_test=False)
    parameters = sum(1 for _ in results[0].model.parameters())
    assert len(stds) == 2 * results[0].final.steps * parameters and set(stds) == {0.8 * 0.5, 0.8 * 1.0}
