"""Privacy accounting for Poisson-subsampled Gaussian DP-SGD, as pure functions.

A DP-SGD run is one mechanism applied ``steps`` times: each example enters a batch independently
with probability ``sample_rate`` (Poisson sampling), the clipped gradients are summed and
Gaussian noise of std ``noise_multiplier`` x clip norm is added (the sampled Gaussian mechanism).
Everything here is a function of ``(noise_multiplier, sample_rate, steps, delta)``; nothing keeps
state between calls except ``functools.lru_cache`` on the pure inner computations.

Two accountants, both computed with Opacus' analysis code (dp_accounting is used only as the
independent oracle in the tests):

``"rdp"``
    Rényi DP (Mironov 2017, "Rényi Differential Privacy", CSF) of the sampled Gaussian mechanism,
    computed exactly at each order α by ``opacus.accountants.analysis.rdp.compute_rdp``
    (Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian
    Mechanism", arXiv:1908.10530, Sec. 3.3: closed form for integer α, convergent series for
    fractional α). RDP composes additively, so ``steps`` steps cost ``steps`` x the one-step
    curve. The conversion to (ε, δ) is ``opacus...rdp.get_privacy_spent``:
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

Every ε returned is an upper bound on the true ε of the mechanism at that δ.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np

from dp_core._validate import ConfigError, require, require_choice, require_in_range, require_positive

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "PrivacySpent",
    "epsilon",
    "epsilons",
    "noise_multiplier_for",
    "max_steps_within",
]

ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")

#: RDP orders α: Opacus' DEFAULT_ALPHAS (1.1..10.9 by 0.1, 12..63) plus 11 and a geometric-ish
#: run of large integer orders up to 1024 for weak mechanisms (small ε has its optimum at large
#: α, and the sampled Gaussian's RDP jumps once α passes ~σ² log(1/q), so the large orders must
#: be dense: with only 63 and 128, q=0.001, σ=3, 100 steps, δ=1e-6 gives ε=0.138 instead of 0.087).
#: A superset of dp_accounting's default grid. Integer orders stay <= 1024 because Opacus uses
#: float ``special.binom`` (binom(1024, 512) ~ 4.5e306; beyond ~1030 it overflows).
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10 for x in range(1, 100)]
    + list(range(11, 64))
    + list(range(64, 128, 8))
    + list(range(128, 256, 16))
    + list(range(256, 1025, 64))
)

# noise_multiplier_for searches σ in this range. The Opacus series for fractional RDP orders slows
# down as σ grows at large q (the whole grid: ~1.4 s at σ=1e3, q=0.5; ~4 s at σ=1e5), and no DP-SGD
# run uses σ > 1e3.
_SIGMA_MAX = 1e3
_SIGMA_MIN = 1e-2

# PRV numerics (see _prv_bounds).
_PRV_EPS_ERROR = 0.01  # Opacus' default eps_error
_PRV_MIN_EPS_ERROR = 1e-3  # finest eps_error used when refining a small ε
_PRV_REL_EPS_ERROR = 0.005  # refine so that eps_error is at most 0.5% of ε
_PRV_MAX_DOMAIN = 600.0  # privacy-loss domain [-L, L]; Opacus evaluates exp(t) on it (overflow > 709)
_PRV_MAX_POINTS = 1 << 23  # ~8.4M grid points: ~10 s and ~1 GB; beyond, raise ConfigError
_PRV_REFINE_MAX_POINTS = 1 << 22  # the optional refinement pass never costs more than this
_F64_EPS = float(np.finfo(np.float64).eps)


class _PrvOutOfRange(ConfigError):
    """The PRV accountant cannot certify ε for this configuration (grid too large or too fine)."""


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
    require_choice(accountant, key="accountant", choices=ACCOUNTANTS)


def _check_steps(steps: int, *, key: str = "steps") -> None:
    ok = isinstance(steps, numbers.Integral) and not isinstance(steps, bool) and steps >= 0
    require(ok, key=key, value=steps, allowed="to be an integer >= 0")


# --------------------------------------------------------------------------------------------
# RDP (Mironov 2017; Mironov, Talwar, Zhang 2019) via Opacus


@functools.lru_cache(maxsize=1024)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one step of the sampled Gaussian mechanism at each of RDP_ORDERS (read-only array).

    Orders whose computation fails (overflow, a numerically negative log-difference in Opacus'
    series) are set to +inf, i.e. dropped from the minimum over α: that can only loosen ε.
    Values below 0 (round-off when RDP ~ 1e-16) are clamped to 0, the true minimum of a Rényi
    divergence, which again can only raise ε.
    """
    from opacus.accountants.analysis import rdp as opacus_rdp

    values = np.empty(len(RDP_ORDERS))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for i, order in enumerate(RDP_ORDERS):
            try:
                value = float(
                    opacus_rdp.compute_rdp(
                        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=[order]
                    )[0]
                )
            except (ValueError, OverflowError, ZeroDivisionError, FloatingPointError):
                value = math.inf
            values[i] = math.inf if math.isnan(value) else max(value, 0.0)
    values.setflags(write=False)
    return values


def _rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    from opacus.accountants.analysis import rdp as opacus_rdp

    rdp = _rdp_one_step(noise_multiplier, sample_rate) * steps  # RDP composes additively
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # Opacus warns when the optimum is at the edge of the α grid; the bound is still valid.
        warnings.simplefilter("ignore")
        eps, _ = opacus_rdp.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    eps = float(eps)
    if math.isnan(eps):
        return math.inf
    # ε < 0 can come out of the conversion for large δ; (ε, δ)-DP with ε < 0 implies (0, δ)-DP.
    return max(eps, 0.0)


# --------------------------------------------------------------------------------------------
# PRV (Gopi, Lee, Wutschitz 2021) via Opacus


def _prv_bounds(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, eps_error: float, max_points: int
) -> tuple[float, float, float, int]:
    """(eps_lower, eps_estimate, eps_upper, grid size) from Opacus' PRV analysis at this eps_error.

    This is ``opacus.accountants.PRVAccountant._get_dprv`` + ``get_epsilon`` for a history of one
    entry ``(noise_multiplier, sample_rate, steps)``, with the grid size checked before the grid
    is built. Raises _PrvOutOfRange when the grid is too large or too fine to trust.
    """
    from opacus.accountants.analysis import prv as opacus_prv

    delta_error = delta / 1000  # Opacus' default
    prv = opacus_prv.PoissonSubsampledGaussianPRV(sample_rate, noise_multiplier)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        # Half-width L of the privacy-loss domain, from an RDP tail bound (Gopi et al., Remark 5.6).
        half_width = opacus_prv.compute_safe_domain_size(
            prvs=[prv], max_self_compositions=[steps], eps_error=eps_error, delta_error=delta_error
        )
        # Mesh from Gopi et al. Thm. 5.5 (as in Opacus' PRVAccountant._get_domain).
        mesh = eps_error / math.sqrt(steps * math.log(12 / delta_error) / 2)
        size = 2 * half_width / mesh
        if not math.isfinite(half_width) or half_width > _PRV_MAX_DOMAIN:
            raise _PrvOutOfRange(
                f"The PRV accountant cannot handle noise_multiplier={noise_multiplier}, "
                f"sample_rate={sample_rate}, steps={steps}, delta={delta}: the privacy loss reaches "
                f"{half_width:.3g} (ε is in the hundreds or more). Use accountant='rdp' for such weak "
                "privacy."
            )
        if size > max_points:
            raise _PrvOutOfRange(
                f"The PRV accountant would need a grid of {size:.3g} points (at most {max_points} are "
                f"allowed) for noise_multiplier={noise_multiplier}, sample_rate={sample_rate}, "
                f"steps={steps}, delta={delta}. Use accountant='rdp' for this configuration."
            )
        domain = opacus_prv.Domain.create_aligned(-half_width, half_width, mesh)
        truncated = opacus_prv.TruncatedPrivacyRandomVariable(prv, domain.t_min, domain.t_max)
        try:
            discrete = opacus_prv.discretize(truncated, domain)
            composed = opacus_prv.compose_heterogeneous(dprvs=[discrete], num_self_compositions=[steps])
            # Float64 round-off of the FFT composition (relative error ~ steps x machine eps per
            # Fourier coefficient) is spread evenly over the grid; where the true pmf is below it,
            # it shows up as negative masses. Bound its effect on any tail sum (a δ) by
            # 2 x grid size x the per-bin noise, and certify ε at δ minus that bound.
            # Opacus' own check (longdouble eps x size < δ) is 2048x too weak for a float64 pmf.
            pmf = composed.pmf
            per_bin = max(-float(pmf.min()), steps * _F64_EPS * float(pmf.max()), 0.0)
            roundoff = 2 * pmf.size * per_bin
            if not roundoff <= delta / 10:
                raise _PrvOutOfRange(
                    f"The PRV accountant cannot certify delta={delta} for noise_multiplier="
                    f"{noise_multiplier}, sample_rate={sample_rate}, steps={steps}: float64 round-off "
                    f"in its FFT composition is ~{roundoff:.2g}, not far enough below delta. "
                    "Use accountant='rdp' (or a larger delta)."
                )
            lower, estimate, upper = composed.compute_epsilon(delta - roundoff, delta_error, eps_error)
        except (RuntimeError, ValueError, IndexError, FloatingPointError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise _PrvOutOfRange(
                f"The PRV accountant failed for noise_multiplier={noise_multiplier}, "
                f"sample_rate={sample_rate}, steps={steps}, delta={delta}: {exc}. "
                "Use accountant='rdp' for this configuration."
            ) from exc
    lower, estimate, upper = float(lower), float(estimate), float(upper)
    if not (math.isfinite(upper) and math.isfinite(estimate)) or upper > half_width:
        raise _PrvOutOfRange(
            f"The PRV accountant returned ε={upper} outside its domain [-{half_width:.3g}, {half_width:.3g}] "
            f"for noise_multiplier={noise_multiplier}, sample_rate={sample_rate}, steps={steps}, "
            f"delta={delta}. Use accountant='rdp' for this configuration."
        )
    return lower, estimate, upper, domain.size


@functools.lru_cache(maxsize=4096)
def _prv_coarse(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float
) -> tuple[float, float, float, int]:
    """_prv_bounds at Opacus' default eps_error = 0.01 (cached)."""
    return _prv_bounds(noise_multiplier, sample_rate, steps, delta, _PRV_EPS_ERROR, _PRV_MAX_POINTS)


@functools.lru_cache(maxsize=4096)
def _prv_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Certified upper bound on ε from the PRV accountant, refined when ε is small.

    Pass 1 uses Opacus' default eps_error = 0.01. If that is more than 0.5% of the estimate, pass 2
    uses eps_error = max(0.005·ε, 1e-3, the smallest eps_error whose grid fits
    _PRV_REFINE_MAX_POINTS); both upper bounds are valid, we return the smaller one. eps_error
    depends only on the inputs, so results are deterministic.
    """
    _, estimate, upper, size = _prv_coarse(noise_multiplier, sample_rate, steps, delta)
    fine = max(_PRV_REL_EPS_ERROR * estimate, _PRV_MIN_EPS_ERROR)
    # The grid size scales as 1/eps_error (the domain barely depends on it).
    fine = max(fine, _PRV_EPS_ERROR * size / (0.9 * _PRV_REFINE_MAX_POINTS))
    if fine < 0.9 * _PRV_EPS_ERROR:
        try:
            refined = _prv_bounds(noise_multiplier, sample_rate, steps, delta, fine, _PRV_REFINE_MAX_POINTS)[2]
        except _PrvOutOfRange:
            refined = math.inf  # the refinement is optional; pass 1 is already a valid bound
        upper = min(upper, refined)
    return max(upper, 0.0)  # (ε, δ)-DP with ε < 0 implies (0, δ)-DP


def _within(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str, budget: float
) -> bool:
    """Whether ``epsilon(...) <= budget``, deciding from the cheap PRV pass when it is conclusive.

    The coarse PRV pass certifies ε in [lower, upper]. upper <= budget implies the reported ε
    (at most upper) fits; lower > budget implies every valid upper bound, the refined one
    included, exceeds the budget. Only in between is the refined ε computed. A configuration the
    PRV accountant cannot certify counts as over budget.
    """
    if steps == 0 or noise_multiplier == 0 or accountant == "rdp":
        return _epsilon_unchecked(noise_multiplier, sample_rate, steps, delta, accountant) <= budget
    try:
        lower, _, upper, _ = _prv_coarse(noise_multiplier, sample_rate, steps, delta)
        if upper <= budget:
            return True
        if lower > budget:
            return False
        return _prv_epsilon(noise_multiplier, sample_rate, steps, delta) <= budget
    except _PrvOutOfRange:
        return False


# --------------------------------------------------------------------------------------------
# public API


def _epsilon_unchecked(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str) -> float:
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf  # no noise: no privacy
    if accountant == "rdp":
        return _rdp_epsilon(noise_multiplier, sample_rate, steps, delta)
    return _prv_epsilon(noise_multiplier, sample_rate, steps, delta)


def _epsilon_or_nan(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str) -> float:
    try:
        return _epsilon_unchecked(noise_multiplier, sample_rate, steps, delta, accountant)
    except _PrvOutOfRange:
        return math.nan


def epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """Upper bound on ε after ``steps`` steps of Poisson-subsampled Gaussian DP-SGD, at ``delta``.

    ``noise_multiplier == 0`` means no privacy (``math.inf``); ``steps == 0`` gives 0.0.
    Raises ConfigError for invalid arguments, and for ``accountant="prv"`` when the PRV numerics
    cannot certify this configuration (the message suggests ``"rdp"``).
    """
    _check_mechanism(noise_multiplier, sample_rate, delta, accountant)
    _check_steps(steps)
    return _epsilon_unchecked(float(noise_multiplier), float(sample_rate), int(steps), float(delta), accountant)


def epsilons(
    *, noise_multiplier: float, sample_rate: float, steps: Sequence[int], delta: float, accountant: str = "prv"
) -> list[float]:
    """``[epsilon(..., steps=s) for s in steps]``, computed in one go.

    For rdp the one-step RDP curve is computed once and scaled by each step count. For prv the
    discretization grid depends on the step count, so each entry is its own (cached) PRV run: the
    numbers are exactly those of :func:`epsilon`.
    """
    _check_mechanism(noise_multiplier, sample_rate, delta, accountant)
    step_counts = list(steps)
    for count in step_counts:
        _check_steps(count)
    sigma, q, d = float(noise_multiplier), float(sample_rate), float(delta)
    return [_epsilon_unchecked(sigma, q, int(count), d, accountant) for count in step_counts]


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

    Bisection on σ that keeps the upper end: the returned σ was evaluated and satisfies
    ``epsilon(σ) <= target_epsilon``; some σ' >= σ·(1 - tolerance) was evaluated with
    ``epsilon(σ') > target_epsilon`` (or could not be certified by the accountant). σ is searched in
    [1e-2, 1e3]; raises ConfigError when even σ = 1e3 does not reach the target.
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

    def fits(sigma: float) -> bool:
        return _within(sigma, q, n, d, accountant, target_epsilon)

    # Start from a guess and gallop (factor squared each step) to a bracket [low, high] with
    # fits(high) and not fits(low). For prv the guess is the RDP calibration (cheap; PRV ε is
    # usually a little below RDP ε), which saves the slow PRV runs at far-off σ.
    start, factor = 1.0, 2.0
    if accountant == "prv":
        try:
            start = noise_multiplier_for(
                target_epsilon=target_epsilon, sample_rate=q, steps=n, delta=d, accountant="rdp",
                tolerance=tolerance,
            )
            factor = 1.1
        except ConfigError:
            # RDP cannot reach the target below σ = 1e3; PRV (tighter) may. Gallop down from 1e3.
            start = _SIGMA_MAX
    if fits(start):
        high = start
        low = max(high / factor, _SIGMA_MIN)
        while fits(low):
            high = low
            if low <= _SIGMA_MIN:
                return high  # even σ = 1e-2 meets the target; smaller σ is not searched
            factor *= factor
            low = max(low / factor, _SIGMA_MIN)
    else:
        low = high = start
        while not fits(high):
            if high >= _SIGMA_MAX:
                eps_high = _epsilon_or_nan(high, q, n, d, accountant)
                reached = (
                    f"ε = {eps_high:.4g}" if not math.isnan(eps_high)
                    else "ε = ? (the PRV accountant cannot certify this configuration; try accountant='rdp')"
                )
                raise ConfigError(
                    f"No noise multiplier up to {_SIGMA_MAX:g} reaches target_epsilon={target_epsilon:g} "
                    f"with delta={d:g}, sample_rate={q:g}, steps={n} ({accountant} accountant): at "
                    f"noise_multiplier={high:g}, {reached}. Raise target_epsilon or delta, or "
                    "lower sample_rate or steps."
                )
            low = high
            high = min(high * factor, _SIGMA_MAX)
            factor *= factor
    # Invariant: fits(high) and not fits(low).
    while high - low > tolerance * high:
        mid = (low + high) / 2
        if fits(mid):
            high = mid
        else:
            low = mid
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
