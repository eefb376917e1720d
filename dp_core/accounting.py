"""Privacy accounting for Poisson-subsampled Gaussian DP-SGD, as pure functions.

A DP-SGD run is one mechanism applied ``steps`` times: each example enters a batch independently
with probability ``sample_rate`` (Poisson sampling), the clipped gradients are summed and
Gaussian noise of std ``noise_multiplier`` x clip norm is added (the sampled Gaussian mechanism).
Everything here is a function of ``(noise_multiplier, sample_rate, steps, delta)``; nothing keeps
state between calls except ``functools.lru_cache`` on the pure inner computations.

Two accountants, both computed with Opacus' analysis code (dp_accounting is used only as the
independent oracle in the tests):

``"rdp"``
    Rényi DP (Mironov 2017, "Rényi Differential Privacy", CSF) of the sampled Gaussian mechanism
    at each order α (Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled
    Gaussian Mechanism", arXiv:1908.10530, Sec. 3.3: closed form for integer α, convergent series
    for fractional α). These are the terms of ``opacus.accountants.analysis.rdp.compute_rdp``,
    summed for all of :data:`RDP_ORDERS` at once in numpy (Opacus adds them one by one in Python,
    a cost paid for every σ a calibration probes); an order whose vectorised sum is not finite or
    cancels badly is recomputed by Opacus itself. The two agree to float64 round-off (tested). RDP
    composes additively, so ``steps`` steps cost ``steps`` x the one-step curve. The conversion to (ε, δ) is
    ``opacus...rdp.get_privacy_spent``:
    ε = min_α  RDP(α) + log((α-1)/α) - (log δ + log α)/(α-1)
    (Balle, Barthe, Gaboardi, Hsu, Sato 2020, "Hypothesis testing interpretations and Rényi DP",
    Thm. 21; the same bound as Canonne, Kamath, Steinke 2020, Prop. 12, which dp_accounting
    uses). It is tighter than Mironov 2017's original ε = RDP(α) + log(1/δ)/(α-1). We take it
    over a denser α grid than Opacus' default (:data:`RDP_ORDERS`) and clamp ε at 0.

``"prv"``
    Numerical composition of privacy loss random variables (Gopi, Lee, Wutschitz 2021,
    "Numerical Composition of Differential Privacy", NeurIPS, arXiv:2106.02848) with Opacus'
    ``opacus.accountants.analysis.prv`` (the code behind ``opacus.accountants.PRVAccountant``).
    We return the certified upper end ``eps_upper`` of the interval the method reports, never
    the point estimate. Opacus' default ``eps_error = 0.01`` is an absolute error, large for small ε,
    so when ε < 2 we recompute with a finer grid (``eps_error`` down to ``0.005·ε``, at least
    ``1e-3``) and return the smaller of the two certified upper bounds. Configurations whose
    grid would be too large (huge ε, very many steps with little noise, a δ so small that float64
    round-off in the FFT reaches δ) raise :class:`ConfigError` instead of returning a number
    we cannot vouch for (there Opacus' PRVAccountant returns ``inf`` after minutes, or numbers
    at the level of its own round-off). The PRV is that of the "remove" pair
    ((1-q)N(0,σ²) + qN(1,σ²) vs N(0,σ²)); dp_accounting's PLD takes the max over remove and add,
    and the remove direction dominates for this mechanism (checked against it in the tests).

    Several step counts k_1 < ... < K (ε after every epoch) share one grid per pass: the one K
    needs. Its domain half-width L (Gopi et al. Remark 5.6, from RDP tail bounds at δ_err/4 after
    K steps and δ_err/(8K) for one step) only grows with the step count, so it is safe for every
    k <= K; its mesh h is the one Thm. 5.5 prescribes for K at eps_error, and the same theorem
    certifies k compositions on mesh h with eps_error_k = h·sqrt(k·log(12/δ_err)/2) <= eps_error
    (the error of k mean-zero roundings of at most h/2, by Hoeffding). So we discretize once, take
    one rfft of the pmf F, and per k compose as Opacus' ``_compose_fourier`` (irfft(F^k), same roll
    and shift), check float64 round-off, and read ε off with that k's own eps_error_k. The
    refinement pass uses one common finer mesh: the coarsest that gives every k which asks for it
    eps_error_k <= max(0.005·ε_k, 1e-3), within the refinement's grid-size cap. A count whose
    certification fails on the shared coarse grid falls back to its own grid. The grid is widened
    to an FFT-friendly size (more domain is always safe). :func:`epsilon` is ``epsilons`` of a
    single count, so the two agree exactly for one count; for several counts each entry is a
    certified bound that agrees with the single-count one to within the width of their certified
    intervals (2 x eps_error), often a little below it (k < K gets a smaller eps_error_k).

Every ε returned is an upper bound on the true ε of the mechanism at that δ. The numerics live
in :mod:`dp_core._rdp` and :mod:`dp_core._prv`; this module validates, dispatches and calibrates.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import sys
from collections.abc import Callable, Sequence

import numpy as np

from dp_core import _prv, _rdp
from dp_core._prv import PRV_MIN_EPS_ERROR, PRV_REL_EPS_ERROR, PrvOutOfRange, prv_coarse, prv_epsilons
from dp_core._rdp import RDP_ORDERS, rdp_epsilon, rdp_one_step
from dp_core.errors import ConfigError, require, require_in_range, require_positive
from dp_core.registry import Registry

__all__ = [
    "ACCOUNTANTS",
    "EpsilonsOf",
    "RDP_ORDERS",
    "PrivacySpent",
    "clear_caches",
    "epsilon",
    "epsilons",
    "noise_multiplier_for",
    "max_steps_within",
    "rdp_curve",
]

#: ``epsilons_of(noise_multiplier, sample_rate, steps, delta)``: upper bounds on ε after each of the
#: step counts ``steps`` (sorted, distinct, each >= 1), for σ > 0. Every ε this module returns is one.
EpsilonsOf = Callable[[float, float, tuple[int, ...], float], Sequence[float]]


def _rdp_epsilons(noise_multiplier: float, sample_rate: float, steps: tuple[int, ...], delta: float) -> list[float]:
    return [rdp_epsilon(noise_multiplier, sample_rate, count, delta) for count in steps]


#: The accountants by name: ``ACCOUNTANTS.register(name, epsilons_of)`` makes a new one selectable as
#: ``accountant`` in a config (``PrivacyConfig`` validates against this registry) and here.
ACCOUNTANTS: Registry[EpsilonsOf] = Registry("accountant")
ACCOUNTANTS.register("prv", prv_epsilons)
ACCOUNTANTS.register("rdp", _rdp_epsilons)

# noise_multiplier_for searches σ in this range; no DP-SGD run uses σ > 1e3. (The fractional-order
# RDP series also needs ever more terms as σ grows at large q: ~6e4 per order at σ=1e3, q=0.5.)
_SIGMA_MAX = 1e3
_SIGMA_MIN = 1e-2


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacySpent:
    """(ε, δ)-DP guarantee of a run, as reported to users."""

    epsilon: float
    delta: float
    accountant: str

    def __str__(self) -> str:
        if math.isinf(self.epsilon):
            return "ε = ∞ (no noise)"
        return f"ε = {_round_up(self.epsilon)} (δ = {self.delta:g}, {self.accountant.upper()} accountant)"


def _round_up(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, rounded up: a displayed bound stays a bound."""
    if value <= 0:
        return "0"
    exponent = math.floor(math.log10(value)) - (digits - 1)
    scaled = value / 10**exponent
    # Guard against 2.93 being stored as 2.9300000000000002 and shown as 2.94.
    rounded = math.ceil(scaled - 1e-12 * scaled) * 10**exponent
    decimals = max(0, -exponent)
    return f"{rounded:.{decimals}f}"


# --------------------------------------------------------------------------------------------
# validation


def _check_mechanism(noise_multiplier: float, sample_rate: float, delta: float, accountant: str) -> None:
    require_in_range(noise_multiplier, key="noise_multiplier", low=0, high=math.inf)
    require_in_range(sample_rate, key="sample_rate", low=0, high=1, low_open=True)
    require_in_range(delta, key="delta", low=0, high=1, low_open=True, high_open=True)
    ACCOUNTANTS.check(accountant)


def _check_steps(steps: int, *, key: str = "steps") -> None:
    ok = isinstance(steps, numbers.Integral) and not isinstance(steps, bool) and steps >= 0
    require(ok, key=key, value=steps, allowed="to be an integer >= 0")


# --------------------------------------------------------------------------------------------
# ε <= budget, from the cheap PRV pass where it is conclusive (for the σ and step-count searches)


@functools.lru_cache(maxsize=4096)
def _fit(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str, budget: float
) -> tuple[bool, float]:
    """(``epsilon(...) <= budget``, a prediction of ``epsilon(...)`` for the σ search), cached.

    The coarse PRV pass certifies ε in [lower, upper]. upper <= budget implies the reported ε
    (at most upper) fits; lower > budget implies every valid upper bound, the refined one
    included, exceeds the budget. Only in between is the refined ε computed; otherwise the
    prediction is the coarse estimate at δ - δ_err plus the eps_error refinement would use. A
    configuration the PRV accountant cannot certify counts as over budget (prediction NaN).
    """
    if steps == 0 or noise_multiplier == 0 or accountant != "prv":
        value = _epsilon_unchecked(noise_multiplier, sample_rate, steps, delta, accountant)
        return value <= budget, value
    try:
        lower, estimate, upper, eps_error = prv_coarse(noise_multiplier, sample_rate, (steps,), delta)[0]
        if upper <= budget or lower > budget:
            fine = min(eps_error, max(PRV_REL_EPS_ERROR * estimate, PRV_MIN_EPS_ERROR))
            return upper <= budget, upper - eps_error + fine
        value = prv_epsilons(noise_multiplier, sample_rate, (steps,), delta)[0]
        return value <= budget, value
    except PrvOutOfRange:
        return False, math.nan


def _within(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str, budget: float
) -> bool:
    """Whether ``epsilon(...) <= budget``, deciding from the cheap PRV pass when it is conclusive."""
    return _fit(noise_multiplier, sample_rate, steps, delta, accountant, budget)[0]


# --------------------------------------------------------------------------------------------
# public API


def _epsilon_unchecked(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str) -> float:
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf  # no noise: no privacy
    return ACCOUNTANTS.get(accountant)(noise_multiplier, sample_rate, (steps,), delta)[0]


def _epsilon_or_nan(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str) -> float:
    try:
        return _epsilon_unchecked(noise_multiplier, sample_rate, steps, delta, accountant)
    except PrvOutOfRange:
        return math.nan


def epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv") -> float:
    """Upper bound on ε after ``steps`` steps of Poisson-subsampled Gaussian DP-SGD, at ``delta``.

    ``noise_multiplier == 0`` means no privacy (``math.inf``); ``steps == 0`` gives 0.0.
    Raises ConfigError for invalid arguments, and for ``accountant="prv"`` when the PRV numerics
    cannot certify this configuration (the message suggests ``"rdp"``). Equals
    ``epsilons(..., steps=[steps])[0]``.
    """
    _check_mechanism(noise_multiplier, sample_rate, delta, accountant)
    _check_steps(steps)
    return _epsilon_unchecked(float(noise_multiplier), float(sample_rate), int(steps), float(delta), accountant)


def epsilons(
    *, noise_multiplier: float, sample_rate: float, steps: Sequence[int], delta: float, accountant: str = "prv"
) -> list[float]:
    """Upper bounds on ε after each step count in ``steps`` (e.g. every epoch), computed in one go.

    For rdp the one-step RDP curve is computed once and scaled by each step count: the numbers
    are exactly those of :func:`epsilon`. For prv all counts share one discretization per pass,
    on the grid the largest count needs (see the module docstring): one FFT of the pmf, then one
    inverse FFT per count. Each entry is a certified upper bound; it can differ from
    ``epsilon(steps=s)`` (its own grid) by up to the eps_error of either, and it equals it when
    ``steps`` holds one distinct nonzero count.
    """
    _check_mechanism(noise_multiplier, sample_rate, delta, accountant)
    step_counts = list(steps)
    for count in step_counts:
        _check_steps(count)
    sigma, q, d = float(noise_multiplier), float(sample_rate), float(delta)
    if sigma == 0:
        return [_epsilon_unchecked(sigma, q, int(count), d, accountant) for count in step_counts]
    counts = tuple(sorted({int(count) for count in step_counts if count > 0}))
    by_count = dict(zip(counts, ACCOUNTANTS.get(accountant)(sigma, q, counts, d))) if counts else {}
    return [by_count[int(count)] if count > 0 else 0.0 for count in step_counts]


def _search_noise_multiplier(
    probe: Callable[[float], tuple[bool, float]], *, start: float, slope: float, tolerance: float
) -> tuple[float, float, float]:
    """Bracket the smallest fitting σ in [_SIGMA_MIN, _SIGMA_MAX]: (low, high, slope); low = 0 if σ_min fits.

    ``probe(σ)`` gives (fits, log(ε/target)) with log(ε/target) NaN when unknown. Invariant:
    ``high`` was probed and fits, ``low`` was probed and does not (``high = inf`` if no σ up to
    _SIGMA_MAX fits). In x = log σ, ε is close to linear in log-log, so each probe aims at the
    secant estimate of the root (through the last two probes, or from the last one with
    ``slope`` = d log ε / d log σ) and steps b = 0.3·tolerance past it toward the end of the
    bracket farther from it: with a good estimate two probes close the bracket to
    ``high - low <= tolerance·high``. Safeguards: outside a bracket, steps are at least 2b and at
    most a doubling-per-probe gallop; inside, probes stay in the inner 90% and every third probe
    that did not halve the bracket is a bisection.

    Every probe is a point σ = exp(k·c) of one geometric grid, c = -log(1 - tolerance), so the
    search ends between two neighbours of the grid, and calibrations for different targets probe
    the same σ's: an Optuna sweep's hundreds of target ε's hit the cached ε of the σ's probed
    before (the PRV passes are cached by σ), and each trial's per-epoch ε too.
    """
    # high - low <= tolerance·high  <=>  x_high - x_low <= -log(1 - tolerance); a hair less, so
    # that neighbouring grid points satisfy it despite rounding.
    close = -math.log(1 - tolerance) * (1 - 1e-9)
    k_min, k_max = math.ceil(math.log(_SIGMA_MIN) / close), math.floor(math.log(_SIGMA_MAX) / close)
    x_min, x_max = k_min * close, k_max * close
    step = 0.3 * close

    def on_grid(x: float) -> float:
        """The grid point nearest x, strictly inside the bracket when there is one."""
        k = min(max(round(x / close), k_min), k_max)
        if low is not None:
            k = max(k, round(low[0] / close) + 1)
        if high is not None:
            k = min(k, round(high[0] / close) - 1)
        return k * close

    low: tuple[float, float] | None = None  # (x, gap)
    high: tuple[float, float] | None = None
    recent: list[tuple[float, float]] = []
    x = on_grid(min(max(math.log(start), x_min), x_max))
    gallop, widths = math.log(4.0), []
    while True:
        fits, gap = probe(math.exp(x))
        if fits and (high is None or x < high[0]):
            high = (x, gap)
        elif not fits and (low is None or x > low[0]):
            low = (x, gap)
        if math.isfinite(gap):
            recent = [*recent[-1:], (x, gap)]
        if len(recent) == 2 and abs(recent[1][0] - recent[0][0]) > 1e-6:
            secant = (recent[1][1] - recent[0][1]) / (recent[1][0] - recent[0][0])
            if secant < 0:
                slope = secant
        if high is not None and (high[0] <= x_min or (low is not None and high[0] - low[0] <= close * (1 + 1e-9))):
            return (math.exp(low[0]) if low else 0.0), math.exp(high[0]), slope
        if low is not None and low[0] >= x_max:
            return math.exp(low[0]), math.inf, slope
        root = recent[-1][0] - recent[-1][1] / slope if recent else math.nan
        if high is None:  # galloping up
            target = root + step if math.isfinite(root) else low[0] + gallop
            x = min(max(target, low[0] + 2 * step), low[0] + gallop, x_max)
            gallop *= 2
        elif low is None:  # galloping down
            target = root - step if math.isfinite(root) else high[0] - gallop
            x = max(min(target, high[0] - 2 * step), high[0] - gallop, x_min)
            gallop *= 2
        else:
            width = high[0] - low[0]
            widths.append(width)
            stalled = len(widths) >= 3 and width > widths[-3] / 2
            if stalled or not math.isfinite(root):
                x, widths = (low[0] + high[0]) / 2, []
            else:
                target = root + step if high[0] - root > root - low[0] else root - step
                x = min(max(target, low[0] + 0.05 * width), high[0] - 0.05 * width)
        x = on_grid(x)


def noise_multiplier_for(
    *,
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "prv",
    tolerance: float = 0.01,
) -> float:
    """The smallest σ (to within ``tolerance``, relative) with ``epsilon(σ) <= target_epsilon``.

    A safeguarded secant search in log ε vs log σ (see _search_noise_multiplier) that keeps the
    upper end: the returned σ was evaluated and satisfies ``epsilon(σ) <= target_epsilon``; some
    σ' >= σ·(1 - tolerance) was evaluated with ``epsilon(σ') > target_epsilon`` (or could not be
    certified by the accountant). σ is searched in [1e-2, 1e3]; raises ConfigError when even
    σ = 1e3 does not reach the target. For prv the search starts from the RDP calibration (cheap;
    PRV ε is usually a little below RDP ε) and its log-log slope.
    """
    require_positive(target_epsilon, key="target_epsilon")
    _check_mechanism(1.0, sample_rate, delta, accountant)
    _check_steps(steps)
    require_in_range(tolerance, key="tolerance", low=0, high=0.5, low_open=True)
    q, d, n = float(sample_rate), float(delta), int(steps)
    if n == 0:
        raise ConfigError(
            "Expected steps >= 1 to calibrate a noise multiplier: with steps=0 nothing is spent and "
            "any σ (even 0) meets target_epsilon."
        )

    def probe_for(name: str) -> Callable[[float], tuple[bool, float]]:
        def probe(sigma: float) -> tuple[bool, float]:
            fits, value = _fit(sigma, q, n, d, name, float(target_epsilon))
            gap = math.log(value / target_epsilon) if 0 < value < math.inf else math.nan
            return fits, gap

        return probe

    # Moments-accountant scale σ ≈ q·sqrt(2T log(1/δ))/ε (Abadi et al. 2016) as the RDP start.
    start = q * math.sqrt(2 * n * math.log(1 / d)) / target_epsilon
    # For prv, RDP only gives the PRV search its start and slope: 5% is close enough.
    rdp_tolerance = tolerance if accountant == "rdp" else max(tolerance, 0.05)
    _, high, slope = _search_noise_multiplier(probe_for("rdp"), start=start, slope=-1.0, tolerance=rdp_tolerance)
    if accountant != "rdp":
        # PRV is tighter than RDP: where RDP cannot reach the target below σ = 1e3, PRV may.
        start = _SIGMA_MAX if math.isinf(high) else high
        _, high, _ = _search_noise_multiplier(probe_for(accountant), start=start, slope=slope, tolerance=tolerance)
    if math.isinf(high):
        eps_high = _epsilon_or_nan(_SIGMA_MAX, q, n, d, accountant)
        reached = (
            f"ε = {eps_high:.4g}"
            if not math.isnan(eps_high)
            else "ε = ? (the PRV accountant cannot certify this configuration; try accountant='rdp')"
        )
        raise ConfigError(
            f"No noise multiplier up to {_SIGMA_MAX:g} reaches target_epsilon={target_epsilon:g} "
            f"with delta={d:g}, sample_rate={q:g}, steps={n} ({accountant} accountant): at "
            f"noise_multiplier={_SIGMA_MAX:g}, {reached}. Raise target_epsilon or delta, or "
            "lower sample_rate or steps."
        )
    return high


def max_steps_within(
    *,
    epsilon_budget: float,
    noise_multiplier: float,
    sample_rate: float,
    delta: float,
    accountant: str = "prv",
    upper: int,
) -> int:
    """The largest ``steps`` in [0, upper] with ``epsilon(steps) <= epsilon_budget``.

    Bisection keeping ``epsilon(lo) <= budget < epsilon(hi)`` (ε is nondecreasing in steps); the
    result ``s`` satisfies ``epsilon(s) <= budget`` and, unless ``s == upper``,
    ``epsilon(s + 1) > budget``. A step count the PRV accountant cannot certify counts as over budget.
    """
    require_in_range(epsilon_budget, key="epsilon_budget", low=0, high=math.inf)
    _check_mechanism(noise_multiplier, sample_rate, delta, accountant)
    _check_steps(upper, key="upper")
    sigma, q, d = float(noise_multiplier), float(sample_rate), float(delta)

    def fits(steps: int) -> bool:
        return _within(sigma, q, steps, d, accountant, epsilon_budget)

    if fits(int(upper)):
        return int(upper)
    low, high = 0, int(upper)  # fits(0) holds: ε(0) = 0
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


def clear_caches() -> None:
    """Empty every cache of the accounting numerics (``functools.lru_cache`` here, in ``_prv`` and in
    ``_rdp``), so that the next computation starts cold, as in a fresh process (for benchmarks)."""
    for module in (sys.modules[__name__], _prv, _rdp):
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


def rdp_curve(*, noise_multiplier: float, sample_rate: float, steps: int) -> np.ndarray:
    """Rényi DP of ``steps`` sampled Gaussian steps at each order of :data:`RDP_ORDERS` (a new array).

    For composing several runs (RDP adds up) before one conversion to (ε, δ). ``+inf`` marks an
    order whose value could not be computed (it drops out of any minimum over orders).
    """
    _check_mechanism(noise_multiplier, sample_rate, 0.5, "rdp")
    _check_steps(steps)
    if steps == 0:
        return np.zeros(len(RDP_ORDERS))
    if noise_multiplier == 0:
        return np.full(len(RDP_ORDERS), math.inf)
    return int(steps) * rdp_one_step(float(noise_multiplier), float(sample_rate))
