"""Empirical privacy audit in one training run: Steinke, Nasr, Jagielski 2023.

"Privacy Auditing with One (1) Training Run" (NeurIPS 2023, arXiv:2305.08846). Insert m canaries,
each included in the training set independently with probability 1/2 (S_i ∈ {-1, +1} uniform),
train once, score every canary, and guess "included" for the k₊ highest scores and "excluded"
for the k₋ lowest (abstaining on the rest). With r = k₊ + k₋ guesses of which v are right, the
paper's Theorem 3 bounds what an (ε, δ)-DP training run allows:

    P[W ≥ v] ≤ f(v) + 2 m δ · max_{i ∈ {1..m}} (f(v - i) - f(v)) / i,
    f(v) = P[Binomial(r, e^ε / (1 + e^ε)) ≥ v],

where W is the number of correct guesses (for i > v the term is (1 - f(v))/i, largest at i = v,
so i ≤ v suffices; the paper's Appendix D code does the same). If the observed v makes this
probability at most β = 1 - confidence, the run is not (ε, δ)-DP, at confidence 1 - β. The
reported lower bound is the largest ε of a fixed grid (step :data:`EPSILON_STEP`) such that every
grid ε up to it is rejected: if the run really is (ε₀, δ)-DP, reporting ε ≥ ε₀ requires a false
rejection at the first grid point ≥ ε₀, a single fixed test, so the lower bound is wrong with
probability at most β without assuming the bound is monotone in ε. Several (k₊, k₋) choices
are tried with a Bonferroni correction (each at β / their number).

A correct DP-SGD run has an empirical ε ≤ its theoretical ε (with probability ≥ 1 - β). One run
gives weak lower bounds for small ε; it shines at catching a trainer whose true noise is far
below its claim.

Two canary kinds: ``ood`` (uniformly random images with random labels: nothing in the data looks
like them, so a memorising model gives them away) and ``mislabelled`` (training images with a
wrong label, taken out of the training split). The canaries' membership is the only thing that
varies, so the sampling rate is fixed from the *expected* training-set size (base + m/2): a
``batch_size`` would otherwise make q depend on how many canaries were drawn in.

Run ``python -m dp_core.audit --help`` for the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dp_core.config import TrainConfig
from dp_core.data import DatasetSplits, load_data
from dp_core.errors import ConfigError, require, require_choice, require_in_range

__all__ = [
    "CANARY_KINDS",
    "EPSILON_STEP",
    "Canaries",
    "AuditBound",
    "AuditResult",
    "insert_canaries",
    "audit_config",
    "canary_scores",
    "p_value",
    "epsilon_lower_bound",
    "audit",
    "main",
]

CANARY_KINDS: tuple[str, ...] = ("ood", "mislabelled")
EPSILON_STEP = 0.01  # resolution of the reported lower bound (rounded down to it)
_EPSILON_MAX = 50.0  # no audit of m ≤ 1e5 canaries can certify more (needs ~e^ε guesses)
# (k₊, k₋) as fractions of m: guess on the extremes only, where a memorised canary shows.
_DEFAULT_GUESS_FRACTIONS: tuple[tuple[float, float], ...] = ((0.05, 0.05), (0.1, 0.1), (0.2, 0.2), (0.1, 0.0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Canaries:
    """m canary examples and which of them were put into the training set."""

    images: torch.Tensor  # m x C x H x W, float32, normalised like the dataset
    labels: torch.Tensor  # m, int64: the (wrong or random) label the canary is trained with
    included: torch.Tensor  # m, bool: S_i = +1
    kind: str

    @property
    def count(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditBound:
    """The lower bound and the guesses it rests on."""

    epsilon_lower_bound: float
    delta: float
    confidence: float
    canaries: int
    guesses: int  # r = k₊ + k₋
    correct: int  # v
    k_plus: int
    k_minus: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditResult:
    """An audited run: the empirical lower bound next to the trainer's theoretical ε."""

    bound: AuditBound
    theoretical_epsilon: float
    accountant: str
    test_accuracy: float
    canary_kind: str
    canaries_included: int

    @property
    def epsilon_lower_bound(self) -> float:
        return self.bound.epsilon_lower_bound

    def metrics(self) -> dict[str, float]:
        return {
            "audit_epsilon_lower_bound": self.epsilon_lower_bound,
            "audit_theoretical_epsilon": self.theoretical_epsilon,
            "audit_test_accuracy": self.test_accuracy,
            "audit_canaries": float(self.bound.canaries),
        }

    def summary(self) -> str:
        b = self.bound
        theory = "∞" if math.isinf(self.theoretical_epsilon) else f"{self.theoretical_epsilon:.3f}"
        return (
            f"privacy audit (Steinke, Nasr, Jagielski 2023, one run): empirical ε ≥ {b.epsilon_lower_bound:.2f} "
            f"at {b.confidence:.0%} confidence (δ = {b.delta:g}; {b.correct} of {b.guesses} guesses right, "
            f"k₊ = {b.k_plus}, k₋ = {b.k_minus}, {b.canaries} {self.canary_kind} canaries, "
            f"{self.canaries_included} included) vs theoretical ε = {theory} "
            f"(δ = {b.delta:g}, {self.accountant.upper()} accountant)"
        )


# ---- canaries ---------------------------------------------------------------------------------


def insert_canaries(
    data: DatasetSplits, *, count: int, kind: str = "ood", seed: int = 0
) -> tuple[DatasetSplits, Canaries]:
    """``data`` with the included canaries appended to its training split, and the canaries.

    Each canary is included independently with probability 1/2 (the paper's S_i), drawn from a
    generator seeded with ``seed``. ``ood``: images uniform between the training images' min and
    max pixel value, labels uniform over the classes. ``mislabelled``: ``count`` training images
    (removed from the training split) with a label shifted by 1..K-1, i.e. uniformly wrong.
    """
    require_choice(kind, key="canary_kind", choices=CANARY_KINDS)
    train_images, train_labels = data.train.tensors
    ok = isinstance(count, int) and not isinstance(count, bool) and 1 <= count
    limit = len(train_labels) // 2 if kind == "mislabelled" else math.inf
    require(
        ok and count <= limit,
        key="canaries",
        value=count,
        allowed="to be an integer >= 1"
        + (f" and <= N/2 = {limit} for mislabelled canaries" if kind == "mislabelled" else ""),
    )
    generator = torch.Generator().manual_seed(seed)
    if kind == "ood":
        low, high = float(train_images.min()), float(train_images.max())
        images = low + (high - low) * torch.rand((count, *train_images.shape[1:]), generator=generator)
        labels = torch.randint(data.num_classes, (count,), generator=generator)
        base_images, base_labels = train_images, train_labels
    else:
        order = torch.randperm(len(train_labels), generator=generator)
        chosen, rest = order[:count], order[count:]
        images = train_images[chosen].clone()
        shift = torch.randint(1, data.num_classes, (count,), generator=generator)
        labels = (train_labels[chosen] + shift) % data.num_classes
        base_images, base_labels = train_images[rest], train_labels[rest]
    included = torch.rand(count, generator=generator) < 0.5
    canaries = Canaries(
        images=images.to(train_images.dtype), labels=labels.to(torch.int64), included=included, kind=kind
    )
    train = TensorDataset(
        torch.cat([base_images, canaries.images[included]]), torch.cat([base_labels, canaries.labels[included]])
    )
    return dataclasses.replace(data, train=train), canaries


@torch.no_grad()
def canary_scores(model: nn.Module, canaries: Canaries, *, batch_size: int = 1024) -> torch.Tensor:
    """Logit margin of each canary's own label, z_y - max_{j≠y} z_j: high when it was memorised."""
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for start in range(0, canaries.count, batch_size):
        logits = model(canaries.images[start : start + batch_size].to(device)).float()
        labels = canaries.labels[start : start + batch_size].to(device)
        own = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.scatter(1, labels[:, None], -math.inf).max(dim=1).values
        scores.append((own - others).cpu())
    model.train()
    return torch.cat(scores)


# ---- the bound (Steinke, Nasr, Jagielski 2023, Theorem 3) --------------------------------------


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[≥ ``correct`` of ``guesses`` right] for an (ε, δ)-DP run (Theorem 3).

    f(v) = P[Binomial(r, q) ≥ v] with q = e^ε/(1+e^ε), the accuracy of ε-DP randomised response;
    the δ term is 2 m δ · max_{1≤i≤v} P[v-i ≤ Binomial(r, q) < v] / i.
    """
    m, r, v = canaries, guesses, correct
    require(
        0 <= v <= r <= m,
        key="(canaries, guesses, correct)",
        value=(m, r, v),
        allowed="to satisfy 0 <= correct <= guesses <= canaries",
    )
    require_in_range(epsilon, key="epsilon", low=0, high=math.inf)
    require_in_range(delta, key="delta", low=0, high=1)
    return float(_p_values(m, r, v, np.array([float(epsilon)]), delta)[0])


def _p_values(m: int, r: int, v: int, epsilons: np.ndarray, delta: float) -> np.ndarray:
    """:func:`p_value` at each of ``epsilons`` (validated by the caller), vectorised over ε."""
    from scipy import special, stats

    q = special.expit(epsilons)  # e^ε / (1 + e^ε)
    tail = stats.binom.sf(v - 1, r, q)  # f(v) = P[B >= v]
    if delta == 0 or v == 0:
        return np.minimum(tail, 1.0)
    i = np.arange(1, v + 1)
    # f(v - i) - f(v) = P[v - i <= B <= v - 1], cumulated from the top; one row per i.
    below = np.cumsum(stats.binom.pmf((v - i)[:, None], r, q[None, :]), axis=0)
    return np.minimum(tail + 2 * m * delta * np.max(below / i[:, None], axis=0), 1.0)


def _epsilon_rejected_up_to(*, canaries: int, guesses: int, correct: int, delta: float, significance: float) -> float:
    """Largest grid ε with every grid ε' ≤ it rejected (p-value ≤ significance); 0 if ε' = 0 is not."""
    grid = np.round(np.arange(0.0, _EPSILON_MAX + EPSILON_STEP / 2, EPSILON_STEP), 10)
    chunk = 256  # the scan stops at the first ε not rejected: usually within the first chunk or two
    for start in range(0, len(grid), chunk):
        block = grid[start : start + chunk]
        rejected = _p_values(canaries, guesses, correct, block, delta) <= significance
        if not rejected.all():
            first = int(np.argmin(rejected))  # the first grid ε not rejected
            return 0.0 if start + first == 0 else float(grid[start + first - 1])
    return float(grid[-1])


def epsilon_lower_bound(
    scores: torch.Tensor | np.ndarray,
    included: torch.Tensor | np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    guess_counts: Sequence[tuple[int, int]] | None = None,
) -> AuditBound:
    """The empirical ε lower bound from canary ``scores`` (higher: guess included) and the truth.

    ``guess_counts`` are the (k₊, k₋) to try, fixed before looking at the scores (default: 5%,
    10%, 20% of m on each side, and 10% above only); each is tested at significance
    (1 - confidence) / len(guess_counts) and the largest bound is returned.
    """
    score = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(included, dtype=bool)
    m = len(score)
    require(
        m >= 1 and truth.shape == score.shape,
        key="scores",
        value=f"{m} scores, {truth.shape} labels",
        allowed="to give one score per canary",
    )
    require(bool(np.all(np.isfinite(score))), key="scores", value="non-finite", allowed="to be finite numbers")
    require_in_range(confidence, key="confidence", low=0, high=1, low_open=True, high_open=True)
    require_in_range(delta, key="delta", low=0, high=1)
    if guess_counts is None:
        guess_counts = sorted(
            {(int(a * m), int(b * m)) for a, b in _DEFAULT_GUESS_FRACTIONS if int(a * m) + int(b * m) >= 1}
        )
    for k_plus, k_minus in guess_counts:
        require(
            0 <= k_plus and 0 <= k_minus and 1 <= k_plus + k_minus <= m,
            key="guess_counts",
            value=(k_plus, k_minus),
            allowed=f"to satisfy k+ >= 0, k- >= 0 and 1 <= k+ + k- <= m = {m}",
        )
    significance = (1 - confidence) / len(guess_counts)
    # Ties broken by a fixed order (index), never by the truth.
    order = np.lexsort((np.arange(m), score))  # ascending score
    best: AuditBound | None = None
    for k_plus, k_minus in guess_counts:
        top, bottom = order[m - k_plus :] if k_plus else order[:0], order[:k_minus]
        correct = int(truth[top].sum() + (~truth[bottom]).sum())
        guesses = k_plus + k_minus
        eps = _epsilon_rejected_up_to(
            canaries=m, guesses=guesses, correct=correct, delta=delta, significance=significance
        )
        bound = AuditBound(
            epsilon_lower_bound=eps,
            delta=delta,
            confidence=confidence,
            canaries=m,
            guesses=guesses,
            correct=correct,
            k_plus=k_plus,
            k_minus=k_minus,
        )
        if best is None or bound.epsilon_lower_bound > best.epsilon_lower_bound:
            best = bound
    assert best is not None
    return best


# ---- one audited training run -----------------------------------------------------------------


def audit_config(
    config: TrainConfig, data: DatasetSplits, *, canaries: int = 500, canary_kind: str = "ood", canary_seed: int = 0
) -> tuple[TrainConfig, int]:
    """The configuration :func:`audit` trains and the size of its training set (canaries in).

    With a batch size, q is pinned to ``batch_size / (N + m/2)``: from data-independent sizes
    only, so every canary faces the same mechanism. A caller that accounts for the audit's run
    plans its privacy from these two.
    """
    augmented, _ = insert_canaries(data, count=canaries, kind=canary_kind, seed=canary_seed)
    if config.batch_size is not None:
        base = len(data.train) - (canaries if canary_kind == "mislabelled" else 0)
        config = config.replace(sample_rate=config.batch_size / (base + canaries / 2))
    return config, len(augmented.train)


def audit(
    config: TrainConfig,
    *,
    canaries: int = 500,
    canary_kind: str = "ood",
    seed: int = 0,
    confidence: float = 0.95,
    data: DatasetSplits | None = None,
) -> AuditResult:
    """Train ``config`` once with canaries and compare the empirical ε lower bound with its ε.

    The run trains exactly as :func:`dp_core.train.train` does; only the data differ (canaries
    added) and the sampling rate is pinned to ``batch_size / (N + m/2)`` when a batch size is given.
    """
    from dp_core.train import train

    data = data if data is not None else load_data(config.data)
    augmented, canary_set = insert_canaries(data, count=canaries, kind=canary_kind, seed=seed)
    config, _ = audit_config(config, data, canaries=canaries, canary_kind=canary_kind, canary_seed=seed)
    result = train(config, data=augmented)
    scores = canary_scores(result.model, canary_set)
    bound = epsilon_lower_bound(scores, canary_set.included, delta=result.plan.delta, confidence=confidence)
    return AuditResult(
        bound=bound,
        theoretical_epsilon=result.final.epsilon,
        accountant=result.plan.accountant,
        test_accuracy=result.final.test_accuracy,
        canary_kind=canary_kind,
        canaries_included=int(canary_set.included.sum()),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m dp_core.audit``: the training flags of ``python -m dp_core.train``, plus the audit's."""
    from dp_core.cli import build_parser, config_from_args

    parser = build_parser()
    parser.prog = "python -m dp_core.audit"
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--canaries", type=int, default=500, help="number of canaries m (default: 500)")
    parser.add_argument("--canary-kind", choices=CANARY_KINDS, default="ood", help="ood or mislabelled (default: ood)")
    parser.add_argument("--audit-seed", type=int, default=0, help="seed of the canaries and their inclusion")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence of the lower bound (default: 0.95)")
    args = parser.parse_args(argv)
    try:
        result = audit(
            config_from_args(args),
            canaries=args.canaries,
            canary_kind=args.canary_kind,
            seed=args.audit_seed,
            confidence=args.confidence,
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    metrics = {k: (v if math.isfinite(v) else None) for k, v in result.metrics().items()}
    print(json.dumps({**metrics, **dataclasses.asdict(result.bound)}, indent=2))
    print(result.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
