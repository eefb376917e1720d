"""The one-run privacy audit: the bound's math, canaries, and what it catches on real training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from dp_core import accounting
from dp_core.audit import (
    EPSILON_STEP,
    audit,
    canary_scores,
    epsilon_lower_bound,
    insert_canaries,
    p_value,
)
from dp_core.config import TrainConfig
from dp_core.data import load_dataset
from dp_core.errors import ConfigError

DIGITS = load_dataset("digits")

# ---- the bound (Steinke, Nasr, Jagielski 2023, Theorem 3) --------------------------------------


def _p_value_by_the_theorem(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Theorem 3 as written, the max over every i in 1..m (the module stops at i = v)."""
    q = math.exp(eps) / (1 + math.exp(eps))

    def f(x: int) -> float:
        return float(stats.binom.sf(x - 1, r, q))  # P[Binomial(r, q) >= x]

    return min(f(v) + 2 * m * delta * max((f(v - i) - f(v)) / i for i in range(1, m + 1)), 1.0)


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [
        (100, 40, 35, 1.0, 1e-5),
        (500, 200, 199, 3.0, 1e-5),
        (500, 200, 120, 0.5, 1e-3),
        (50, 10, 10, 2.0, 0.0),
        (20, 20, 0, 1.0, 1e-2),
    ],
)
def test_p_value_is_theorem_3(m: int, r: int, v: int, eps: float, delta: float) -> None:
    assert p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta) == pytest.approx(
        _p_value_by_the_theorem(m, r, v, eps, delta), rel=1e-9, abs=1e-15
    )


def test_perfect_guesses_give_the_closed_form_bound() -> None:
    # δ = 0, all r guesses right: p(ε) = q(ε)^r, rejected while q <= β^(1/r), so ε* = logit(β^(1/r)).
    r = 100
    scores = np.arange(2 * r, dtype=float)
    included = scores >= r  # the top r are exactly the included ones
    bound = epsilon_lower_bound(scores, included, delta=0.0, confidence=0.95, guess_counts=[(r, 0)])
    q_star = 0.05 ** (1 / r)
    exact = math.log(q_star / (1 - q_star))  # 3.493
    assert bound.correct == bound.guesses == r
    assert exact - EPSILON_STEP < bound.epsilon_lower_bound <= exact


def test_uninformative_scores_give_no_bound() -> None:
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    bound = epsilon_lower_bound(rng.normal(size=1000), included, delta=1e-5)
    assert bound.epsilon_lower_bound == 0.0


def test_bound_is_valid_and_tight_on_randomised_response() -> None:
    # Each canary's score is ε-randomised response of its membership: exactly ε-DP per canary.
    # The bound must exceed ε with probability at most 1 - confidence (0.05), and not be loose.
    eps, trials, bounds = 2.0, 100, []
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        included = rng.random(1000) < 0.5
        truthful = rng.random(1000) < math.exp(eps) / (1 + math.exp(eps))
        scores = np.where(truthful, included, ~included) + 0.01 * rng.random(1000)
        bounds.append(epsilon_lower_bound(scores, included, delta=0.0).epsilon_lower_bound)
    assert np.mean(np.array(bounds) > eps) <= 0.05
    assert np.median(bounds) > 0.75 * eps


def test_bad_guess_counts_and_scores_are_refused() -> None:
    with pytest.raises(ConfigError, match="guess_counts"):
        epsilon_lower_bound(np.zeros(10), np.zeros(10, dtype=bool), delta=0.0, guess_counts=[(6, 5)])
    with pytest.raises(ConfigError, match="scores"):
        epsilon_lower_bound(np.array([0.0, math.nan]), np.zeros(2, dtype=bool), delta=0.0)


# ---- canaries ---------------------------------------------------------------------------------


def test_ood_canaries_are_appended_half_included_and_seeded() -> None:
    augmented, canaries = insert_canaries(DIGITS, count=400, kind="ood", seed=3)
    _, same = insert_canaries(DIGITS, count=400, kind="ood", seed=3)
    assert torch.equal(canaries.included, same.included) and torch.equal(canaries.images, same.images)
    included = int(canaries.included.sum())
    assert 150 < included < 250  # Binomial(400, 1/2)
    images, labels = augmented.train.tensors
    assert len(labels) == len(DIGITS.train) + included
    assert torch.equal(images[len(DIGITS.train) :], canaries.images[canaries.included])
    assert torch.equal(labels[len(DIGITS.train) :], canaries.labels[canaries.included])
    assert augmented.test is DIGITS.test


def test_mislabelled_canaries_leave_the_training_split_with_a_wrong_label() -> None:
    augmented, canaries = insert_canaries(DIGITS, count=100, kind="mislabelled", seed=0)
    images, labels = DIGITS.train.tensors
    # Every canary is a training image, with a label different from its own.
    matches = (canaries.images[:, None] == images[None]).flatten(2).all(dim=2)
    own = labels[matches.float().argmax(dim=1)]
    assert bool(matches.any(dim=1).all()) and bool((own != canaries.labels).all())
    assert len(augmented.train) == len(DIGITS.train) - 100 + int(canaries.included.sum())
    with pytest.raises(ConfigError, match="canaries"):
        insert_canaries(DIGITS, count=len(DIGITS.train), kind="mislabelled")


def test_canary_score_is_the_logit_margin_of_its_label() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
    _, canaries = insert_canaries(DIGITS, count=2, seed=0)
    canaries = type(canaries)(
        images=torch.tensor([[[[2.0, 1.0]]], [[[2.0, 1.0]]]]),
        labels=torch.tensor([0, 1]),
        included=canaries.included,
        kind="ood",
    )
    # logits (2, 1, 1.5): label 0 → 2 - 1.5; label 1 → 1 - 2.
    assert canary_scores(model, canaries).tolist() == pytest.approx([0.5, -1.0])


# ---- real training: a correct trainer, and one whose noise is not what it claims --------------

CANARIES = 500
# Digits MLP, expected batch 128 of N + m/2 examples, 20 epochs: 260 steps. σ = 5 gives ε ≈ 1.
AUDITED = {
    "dataset": "digits",
    "model": "mlp",
    "batch_size": 128,
    "epochs": 20,
    "lr": 2.0,
    "accountant": "rdp",
    "delta": 1e-5,
    "seed": 0,
}
CLAIMED_SIGMA = 5.0


def _claimed_epsilon() -> float:
    sample_rate = 128 / (len(DIGITS.train) + CANARIES / 2)  # what audit() pins q to
    steps = int(1 / sample_rate) * AUDITED["epochs"]
    return accounting.epsilon(
        noise_multiplier=CLAIMED_SIGMA, sample_rate=sample_rate, steps=steps, delta=1e-5, accountant="rdp"
    )


def test_correct_trainer_stays_below_its_theoretical_epsilon() -> None:
    config = TrainConfig.from_dict({**AUDITED, "noise_multiplier": CLAIMED_SIGMA, "max_grad_norm": 1.0})
    result = audit(config, canaries=CANARIES, seed=0, data=DIGITS)
    assert result.theoretical_epsilon == pytest.approx(_claimed_epsilon(), rel=1e-12)
    assert 0.5 < result.theoretical_epsilon < 1.5
    assert result.epsilon_lower_bound <= result.theoretical_epsilon
    assert result.bound.canaries == CANARIES and result.bound.delta == 1e-5


def test_no_noise_trainer_is_caught_far_above_its_claimed_epsilon() -> None:
    # The broken trainer: the same mechanism with σ = 0 and no effective clipping (C = 10⁶), while
    # claiming σ = 5 (ε ≈ 1). Nothing in dp_core is bent for this: it is an honest σ = 0 run.
    config = TrainConfig.from_dict({**AUDITED, "noise_multiplier": 0.0, "max_grad_norm": 1e6})
    result = audit(config, canaries=CANARIES, seed=0, data=DIGITS)
    claimed = _claimed_epsilon()
    assert math.isinf(result.theoretical_epsilon)  # dp_core itself never claims privacy without noise
    assert result.epsilon_lower_bound >= 2.5  # measured 3.40 (199 of 200 guesses right)
    assert result.epsilon_lower_bound > claimed + 1.5
