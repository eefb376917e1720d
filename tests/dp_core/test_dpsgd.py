"""The DP-SGD step against its definition, computed one example at a time."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dp_core.dpsgd import make_private, per_layer_norms, poisson_batches


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _naive_clipped_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds: list[float], flat: bool
) -> list[torch.Tensor]:
    """Σ_i clip(g_i) computed by a plain loop over examples, straight from the definition."""
    params = [p for p in model.parameters()]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        if flat:
            norm = torch.sqrt(sum((g**2).sum() for g in grads))
            factors = [min(1.0, bounds[0] / (norm.item() + 1e-6))] * len(grads)
        else:
            factors = [min(1.0, c / (g.norm().item() + 1e-6)) for g, c in zip(grads, bounds)]
        for t, g, f in zip(total, grads, factors):
            t += f * g
    return total


@pytest.mark.parametrize("clipping", ["flat", "per_layer"])
@pytest.mark.parametrize("max_grad_norm", [0.05, 1.0, 100.0])
def test_noiseless_step_is_the_mean_of_clipped_per_example_gradients(clipping: str, max_grad_norm: float) -> None:
    reference = _model()
    model = _model()
    batch = 6
    x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
    bounds = [max_grad_norm] if clipping == "flat" else per_layer_norms(max_grad_norm, reference)
    expected = [g / batch for g in _naive_clipped_grads(reference, x, y, bounds, flat=clipping == "flat")]

    private_model, optimizer = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=max_grad_norm,
        expected_batch_size=batch,
        clipping=clipping,
    )
    nn.functional.cross_entropy(private_model(x), y).backward()
    optimizer.step()
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)


def test_huge_clip_without_noise_equals_plain_sgd() -> None:
    plain, private = _model(), _model()
    x = torch.randn(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    nn.functional.cross_entropy(plain(x), y).backward()
    plain_opt.step()
    private_model, optimizer = make_private(
        private,
        torch.optim.SGD(private.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=1e6,
        expected_batch_size=8,
    )
    nn.functional.cross_entropy(private_model(x), y).backward()
    optimizer.step()
    for a, b in zip(plain.parameters(), private.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("noise_multiplier,max_grad_norm,batch", [(1.0, 1.0, 4), (2.5, 0.3, 16)])
def test_noise_has_std_sigma_c_over_expected_batch(noise_multiplier: float, max_grad_norm: float, batch: int) -> None:
    reference = _model()
    x = torch.randn(batch, 1, 8, 8)
    y = torch.randint(0, 10, (batch,))
    clean = [g / batch for g in _naive_clipped_grads(reference, x, y, [max_grad_norm], flat=True)]
    model = _model()
    private_model, optimizer = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=batch,
        noise_generator=torch.Generator().manual_seed(3),
    )
    nn.functional.cross_entropy(private_model(x), y).backward()
    optimizer.step()
    noise = torch.cat([(p.grad - c).flatten() for p, c in zip(model.parameters(), clean)])
    expected_std = noise_multiplier * max_grad_norm / batch
    assert len(noise) > 2000
    assert abs(noise.mean().item()) < 4 * expected_std / math.sqrt(len(noise))
    assert noise.std().item() == pytest.approx(expected_std, rel=0.05)


def test_poisson_batches_sample_each_example_with_probability_q() -> None:
    generator = torch.Generator().manual_seed(0)
    sizes = [
        len(idx) for idx, _ in poisson_batches(num_examples=1000, sample_rate=0.05, steps=400, generator=generator)
    ]
    assert len(sizes) == 400
    assert sum(sizes) / len(sizes) == pytest.approx(50, rel=0.05)
    # Poisson sampling: batch sizes vary (binomial variance n q (1-q) = 47.5), unlike fixed batches.
    variance = sum((s - 50) ** 2 for s in sizes) / len(sizes)
    assert 30 < variance < 70


def _memberships(device: str, *, num_examples: int, sample_rate: float, steps: int) -> torch.Tensor:
    """(steps, N) 0/1 matrix: whether example i was in the batch of step t, as poisson_batches drew them."""
    generator = torch.Generator(device=device).manual_seed(11)
    rows = []
    for indices, ends_step in poisson_batches(
        num_examples=num_examples, sample_rate=sample_rate, steps=steps, generator=generator
    ):
        assert ends_step and indices.device.type == device and indices.dtype == torch.long
        row = torch.zeros(num_examples)
        row[indices.cpu()] = 1.0
        rows.append(row)
    return torch.stack(rows)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return ((a * b).mean() / (a.std(unbiased=False) * b.std(unbiased=False))).item()


@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_poisson_masks_drawn_on_the_device_have_rate_q_and_independent_memberships(device: str) -> None:
    """The sampled Gaussian mechanism the accountant assumes: every example joins every step's batch
    independently with probability q. Over T steps and N examples: the mean batch size is qN (within
    4 standard errors of the binomial mean), and membership is uncorrelated between consecutive steps
    of one example and between two examples in one step (|r| within 5/√pairs, r's standard error
    being 1/√pairs under independence)."""
    num_examples, sample_rate, steps = 200, 0.1, 2000
    member = _memberships(device, num_examples=num_examples, sample_rate=sample_rate, steps=steps)
    sizes = member.sum(dim=1)
    standard_error = math.sqrt(num_examples * sample_rate * (1 - sample_rate) / steps)
    assert abs(sizes.mean().item() - sample_rate * num_examples) < 4 * standard_error
    assert abs(member.mean().item() - sample_rate) < 4 * math.sqrt(sample_rate * (1 - sample_rate) / member.numel())
    consecutive = _correlation(member[:-1].flatten(), member[1:].flatten())
    assert abs(consecutive) < 5 / math.sqrt((steps - 1) * num_examples)
    neighbours = _correlation(member[:, :-1].flatten(), member[:, 1:].flatten())
    assert abs(neighbours) < 5 / math.sqrt(steps * (num_examples - 1))
    # A dependence the pooled figures could average out: no single example's lag-1 correlation is far off.
    per_example = [_correlation(member[:-1, i], member[1:, i]) for i in range(0, num_examples, 20)]
    assert max(abs(r) for r in per_example) < 5 / math.sqrt(steps - 1)


def test_poisson_masks_on_the_cpu_are_opacus_uniform_sampler_batches() -> None:
    """On the CPU the draw is Opacus' UniformWithReplacementSampler's, batch for batch: a seed gives
    the runs it gave before sampling moved to the trainer's device."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    opacus_batches = UniformWithReplacementSampler(
        num_samples=300, sample_rate=0.05, generator=torch.Generator().manual_seed(3), steps=40
    )
    ours = poisson_batches(num_examples=300, sample_rate=0.05, steps=40, generator=torch.Generator().manual_seed(3))
    for theirs, (mine, _) in zip(opacus_batches, ours, strict=True):
        assert mine.tolist() == list(theirs)


def test_virtual_batches_equal_one_physical_batch() -> None:
    """Splitting a logical batch into chunks (BatchMemoryManager style) changes nothing."""
    x = torch.randn(40, 1, 8, 8)
    y = torch.randint(0, 10, (40,))
    results = []
    for max_physical in (None, 7):
        model = _model()
        private_model, optimizer = make_private(
            model,
            torch.optim.SGD(model.parameters(), lr=0.5),
            noise_multiplier=0.7,
            max_grad_norm=0.5,
            expected_batch_size=12,
            noise_generator=torch.Generator().manual_seed(5),
        )
        steps = 0
        for indices, ends_step in poisson_batches(
            num_examples=40,
            sample_rate=0.3,
            steps=3,
            generator=torch.Generator().manual_seed(9),
            max_physical_batch_size=max_physical,
            optimizer=optimizer,
        ):
            if max_physical is not None:
                assert len(indices) <= max_physical
            nn.functional.cross_entropy(private_model(x[indices]), y[indices]).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += ends_step
        assert steps == 3
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
