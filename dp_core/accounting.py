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
    ~0.06 s per σ); an order whose vectorised sum is not finite or cancels badly is recomputed by
    Opacus itself. The two agree to float64 round-off (tested). RDP composes additively, so
    ``steps`` steps cost ``steps`` x the one-step curve. The conversion to (ε, δ) is
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

Every ε returned is an upper bound on the true ε of the mechanism at that δ.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from dp_core._validate import ConfigError, require, require_choice, require_in_range, require_positive

if TYPE_CHECKING:
    from opacus.accountants.analysis.prv import DiscretePRV, Domain

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

# noise_multiplier_for searches σ in this range; no DP-SGD run uses σ > 1e3. (The fractional-order
# RDP series also needs ever more terms as σ grows at large q: ~6e4 per order at σ=1e3, q=0.5.)
_SIGMA_MAX = 1e3
_SIGMA_MIN = 1e-2

# PRV numerics (see _prv_pass).
_PRV_EPS_ERROR = 0.01  # Opacus' default eps_error
_PRV_DELTA_ERROR = 1e-3  # delta_error = 0.001·δ, Opacus' default
_PRV_MIN_EPS_ERROR = 1e-3  # finest eps_error used when refining a small ε
_PRV_REL_EPS_ERROR = 0.005  # refine so that eps_error is at most 0.5% of ε
_PRV_MAX_DOMAIN = 600.0  # privacy-loss domain [-L, L]; Opacus evaluates exp(t) on it (overflow > 709)
_PRV_MAX_POINTS = 1 << 23  # ~8.4M grid points: ~10 s and ~1 GB; beyond, raise ConfigError
_PRV_REFINE_MAX_POINTS = 1 << 22  # the optional refinement pass never costs more than this
_F64_EPS = float(np.finfo(np.float64).eps)


#: Positions in RDP_ORDERS of Opacus' default RDP orders (used for the PRV domain, as Opacus does).
_DEFAULT_ALPHA_INDEX: tuple[int, ...] = tuple(
    RDP_ORDERS.index(a) for a in [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))
)

# One-step RDP in numpy (see _rdp_one_step). Orders split as Opacus splits them.
_ORDERS = np.array(RDP_ORDERS)
_IS_INTEGER = np.array([float(order).is_integer() for order in RDP_ORDERS])
_SERIES_FLOOR = -30.0  # Opacus ends the fractional series after the first term pair below e^-30
_SERIES_MAX_TERMS = 1 << 17  # beyond this, Opacus computes the order (q=0.5, σ=1e3 needs ~6e4)
_CANCELLATION_LIMIT = 1e-3  # a partial sum below this x its largest term: Opacus computes the order


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
# RDP (Mironov 2017; Mironov, Talwar, Zhang 2019), Opacus' terms summed in numpy


@functools.cache
def _integer_order_terms() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(α, i, log binom(α, i), segment starts) for i = 0..α of every integer order, flattened."""
    from scipy import special

    orders = _ORDERS[_IS_INTEGER]
    counts = orders.astype(int) + 1
    alpha = np.repeat(orders, counts)
    index = np.concatenate([np.arange(count, dtype=float) for count in counts])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return alpha, index, np.log(special.binom(alpha, index)), starts  # binom as Opacus computes it


def _log_a_integer_orders(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """log A_α at the integer orders: log Σ_i binom(α,i) q^i (1-q)^(α-i) exp((i²-i)/2σ²).

    Mironov et al. 2019 Sec. 3.3; the terms of Opacus' ``_compute_log_a_for_int_alpha``, added
    with one log-sum-exp per order instead of one ``_log_add`` per term.
    """
    alpha, i, log_binom, starts = _integer_order_terms()
    q, sigma = sample_rate, noise_multiplier
    log_terms = log_binom + i * math.log(q) + (alpha - i) * math.log(1 - q) + (i * i - i) / (2 * sigma**2)
    top = np.maximum.reduceat(log_terms, starts)
    scaled = np.exp(log_terms - np.repeat(top, np.diff(np.append(starts, log_terms.size))))
    return top + np.log(np.add.reduceat(scaled, starts))


def _log_a_fractional_orders(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """log A_α at the fractional orders by Opacus' ``_compute_log_a_for_frac_alpha`` series, vectorised.

    Mironov et al. 2019 Sec. 3.3: A_α = Σ_i binom(α,i) (s0_i + s1_i), the two halves of the integral
    split at z0 = σ² log(1/q - 1) + 1/2. binom(α, i) alternates in sign once i > α + 1. Terms are
    computed for all orders in blocks of i (doubling in width), and each order stops, as in Opacus,
    after the first i where both log-terms are below -30. The signed sums are carried in the scale
    of their largest term so far. NaN marks an order whose sum is not to be trusted: a partial sum
    after a subtraction fell below _CANCELLATION_LIMIT x the largest term (where Opacus' log-space
    subtraction may fail or lose digits), a non-positive total, or the series not ending within
    _SERIES_MAX_TERMS. The caller lets Opacus compute those orders.
    """
    from scipy import special

    q, sigma = sample_rate, noise_multiplier
    orders = _ORDERS[~_IS_INTEGER]
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    log_q, log_1mq = math.log(q), math.log(1 - q)
    top = np.full((2, orders.size), -np.inf)  # per half: largest log-term so far
    total = np.zeros((2, orders.size))  # per half: signed sum / exp(top)
    trusted = np.ones(orders.size, dtype=bool)
    active = np.arange(orders.size)
    first_coef = np.ones(orders.size)  # binom(α, start) for the next block
    start, width = 0, 32
    while active.size and start < _SERIES_MAX_TERMS:
        i = np.arange(start, start + width, dtype=float)[None, :]
        alpha = orders[active][:, None]
        # binom(α, i+1) = binom(α, i)·(α-i)/(i+1): a running product, 20x cheaper than special.binom
        # (which Opacus calls per term) and equal to it within ~i ulps.
        ratios = np.cumprod((alpha - i) / (i + 1), axis=1)
        coef = first_coef[active][:, None] * np.concatenate([np.ones_like(alpha), ratios[:, :-1]], axis=1)
        first_coef[active] = first_coef[active] * ratios[:, -1]
        log_coef = np.log(np.abs(coef))
        j = alpha - i
        # Opacus' expressions, term for term (log_erfc(x) = log 2 + log_ndtr(-x·sqrt 2)).
        log_e0 = math.log(0.5) + (math.log(2) + special.log_ndtr(-((i - z0) / (math.sqrt(2) * sigma)) * 2**0.5))
        log_e1 = math.log(0.5) + (math.log(2) + special.log_ndtr(-((z0 - j) / (math.sqrt(2) * sigma)) * 2**0.5))
        log_s = np.stack([
            (log_coef + i * log_q + j * log_1mq) + (i * i - i) / (2 * sigma**2) + log_e0,
            (log_coef + j * log_q + i * log_1mq) + (j * j - j) / (2 * sigma**2) + log_e1,
        ])
        below = np.maximum(log_s[0], log_s[1]) < _SERIES_FLOOR
        done = below.any(axis=1)
        last = np.where(done, np.argmax(below, axis=1), width - 1)
        included = np.arange(width)[None, :] <= last[:, None]
        log_s = np.where(included, log_s, -np.inf)
        new_top = np.maximum(top[:, active], log_s.max(axis=2))
        carried = total[:, active] * np.exp(np.where(np.isfinite(top[:, active]), top[:, active] - new_top, -np.inf))
        partial = carried[:, :, None] + np.cumsum(np.sign(coef) * np.exp(log_s - new_top[:, :, None]), axis=2)
        after_subtraction = np.where((coef < 0) & included, partial, np.inf).min(axis=(0, 2))
        trusted[active] &= after_subtraction > _CANCELLATION_LIMIT
        top[:, active], total[:, active] = new_top, partial[:, :, -1]
        active = active[~done]
        start, width = start + width, 2 * width
    trusted[active] = False
    trusted &= (total > 0).all(axis=0) & np.isfinite(top).all(axis=0)
    log_halves = top + np.log(np.where(total > 0, total, 1.0))
    return np.where(trusted, np.logaddexp(log_halves[0], log_halves[1]), np.nan)


def _opacus_rdp_one_step(noise_multiplier: float, sample_rate: float, order: float) -> float:
    """One order by Opacus' own ``compute_rdp``; a failure (overflow, a negative log-difference) is inf."""
    from opacus.accountants.analysis import rdp as opacus_rdp

    try:
        return float(opacus_rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=[order])[0])
    except (ValueError, OverflowError, ZeroDivisionError, FloatingPointError):
        return math.inf


@functools.lru_cache(maxsize=1024)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one step of the sampled Gaussian mechanism at each of RDP_ORDERS (read-only array).

    Equal to Opacus' ``compute_rdp`` up to float64 round-off (see the module docstring). Orders
    whose computation fails (overflow, a numerically negative log-difference in Opacus' series)
    are set to +inf, i.e. dropped from the minimum over α: that can only loosen ε. Values below 0
    (round-off when RDP ~ 1e-16) are clamped to 0, the true minimum of a Rényi divergence, which
    again can only raise ε.
    """
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if sample_rate == 1.0:
            values = _ORDERS / (2 * noise_multiplier**2)  # Opacus' special case: the Gaussian mechanism
        else:
            log_a = np.empty(_ORDERS.size)
            log_a[_IS_INTEGER] = _log_a_integer_orders(noise_multiplier, sample_rate)
            log_a[~_IS_INTEGER] = _log_a_fractional_orders(noise_multiplier, sample_rate)
            values = log_a / (_ORDERS - 1)
        for index in np.flatnonzero(~np.isfinite(values)):
            values[index] = _opacus_rdp_one_step(noise_multiplier, sample_rate, RDP_ORDERS[index])
    values = np.where(np.isnan(values), math.inf, np.maximum(values, 0.0))
    values.setflags(write=False)
    return values


@functools.lru_cache(maxsize=4096)
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


def _safe_half_width(noise_multiplier: float, sample_rate: float, steps: int, eps_error: float, delta_error: float) -> float:
    """``opacus_prv.compute_safe_domain_size`` for one mechanism, from the cached one-step RDP curve.

    Same formula and orders (Opacus' ``RDPAccountant.DEFAULT_ALPHAS``) as Opacus, which recomputes
    the RDP curve twice per call. The RDP ε used here is never below Opacus' beyond round-off
    (failed orders are +inf, negatives clamped to 0). Nondecreasing in ``steps``.
    """
    from opacus.accountants.analysis import rdp as opacus_rdp

    one_step = _rdp_one_step(noise_multiplier, sample_rate)[list(_DEFAULT_ALPHA_INDEX)]
    orders = [RDP_ORDERS[i] for i in _DEFAULT_ALPHA_INDEX]

    def rdp_epsilon(curve: np.ndarray, delta: float) -> float:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # an optimum at the edge of the α grid is still a bound
            eps = float(opacus_rdp.get_privacy_spent(orders=orders, rdp=curve, delta=delta)[0])
        return math.inf if math.isnan(eps) else eps

    tail = max(rdp_epsilon(one_step * steps, delta_error / 4), rdp_epsilon(one_step, delta_error / (8 * steps)))
    return max(tail, eps_error) + 3


def _hoeffding_factor(steps: int, delta_error: float) -> float:
    """sqrt(k·log(12/δ_err)/2): Gopi et al. Thm. 5.5 certifies eps_error = mesh x this for k compositions."""
    return math.sqrt(steps * math.log(12 / delta_error) / 2)


def _prv_domain(half_width: float, mesh: float) -> Domain:
    """Opacus' ``Domain.create_aligned(-L, L, mesh)``, widened to a size with small prime factors.

    create_aligned gives t = -n·mesh .. (n+1)·mesh, 2n+2 points; the roll in Opacus'
    ``_compose_fourier`` relies on that shape, so we keep it and only raise n (a wider domain is
    still safe) until 2n+2 = 2 x a 5-smooth number: the FFT of a size with a large prime factor
    is 10-50x slower.
    """
    from opacus.accountants.analysis import prv as opacus_prv
    from scipy import fft

    aligned = opacus_prv.Domain.create_aligned(-half_width, half_width, mesh)
    size = 2 * fft.next_fast_len(aligned.size // 2, real=True)
    n = size // 2 - 1
    return opacus_prv.Domain(t_min=-n * mesh, t_max=(n + 1) * mesh, size=size)


def _truncated_mean(noise_multiplier: float, sample_rate: float, t_min: float, t_max: float) -> float:
    """Opacus' ``TruncatedPrivacyRandomVariable.mean``, with the cdf in scalar Python math.

    Same breakpoints, same ``quad`` calls, same integration by parts
    (E[Y] = Σ [t·F(t)] - ∫F over each piece); quad evaluates the integrand one point at a time,
    and Opacus' numpy cdf costs ~15 µs per point there, this ~1 µs. The cdf is Opacus'
    ``PoissonSubsampledGaussianPRV.cdf`` (Gopi et al. Prop. B.4), truncated and renormalised
    to [t_min, t_max] as in ``TruncatedPrivacyRandomVariable.cdf``.
    """
    from scipy import integrate

    q, sigma = sample_rate, noise_multiplier
    threshold = math.log(1 - q) if q < 1 else -math.inf  # Opacus: np.log(1 - q)
    scale = 2 * math.sqrt(2) * sigma

    def prv_cdf(t: float) -> float:
        if not t > threshold:
            return 0.0
        z = math.log((math.exp(t) + q - 1) / q)
        return -q * math.erfc((2 * z * sigma**2 - 1) / scale) / 2 - (1 - q) * math.erfc((2 * z * sigma**2 + 1) / scale) / 2 + 1.0

    cdf_min = prv_cdf(t_min)
    mass = prv_cdf(t_max) - cdf_min

    def cdf(t: float) -> float:
        if t < t_min:
            return 0.0
        return (prv_cdf(t) - cdf_min) / mass if t < t_max else 1.0

    lower_exponent, upper_exponent = int(np.log10(np.abs(t_min))), int(np.log10(t_max))
    points = np.concatenate([
        [t_min], -np.logspace(start=lower_exponent, stop=-5, num=10), [0],
        np.logspace(start=-5, stop=upper_exponent, num=10), [t_max],
    ])
    mean = 0.0
    for left, right in zip(points[:-1].tolist(), points[1:].tolist()):
        integral, _ = integrate.quad(cdf, left, right, limit=500)
        mean += right * cdf(right) - left * cdf(left) - integral
    return mean


# 4 grids: enough for a calibration's last probes and the epochs' pass at the σ it returns; at most
# ~4 x 70 MB (complex spectra at the _PRV_MAX_POINTS cap), ~1 MB each for typical grids.
@functools.lru_cache(maxsize=4)
def _prv_spectrum(noise_multiplier: float, sample_rate: float, half_width: float, mesh: float) -> tuple[np.ndarray, Domain]:
    """(rfft of the discretized PRV's pmf, its Opacus ``Domain``) on [-L, L] at this mesh (cached).

    ``opacus_prv.discretize`` of the truncated PRV, as in ``PRVAccountant._get_dprv``: the mass
    of each bin, with the grid shifted so that its mean equals the continuous mean (Gopi et al.
    Sec. 5), and the same RuntimeError when that shift is half a bin or more. Opacus evaluates
    the cdf at both edges of every bin; we evaluate it once per edge, where it is not 0, and difference.
    """
    from opacus.accountants.analysis import prv as opacus_prv
    from scipy import fft

    domain = _prv_domain(half_width, mesh)
    prv = opacus_prv.PoissonSubsampledGaussianPRV(sample_rate, noise_multiplier)
    truncated = opacus_prv.TruncatedPrivacyRandomVariable(prv, domain.t_min, domain.t_max)
    centers = domain.ts
    edges = np.append(centers - domain.dt / 2, centers[-1] + domain.dt / 2)
    # The PRV lives on (log(1-q), ∞): below, Opacus' truncated cdf is exactly 0 (0 - 0 over the mass).
    support = int(np.searchsorted(edges, math.log(1 - sample_rate), side="right")) if sample_rate < 1 else 0
    cdf = np.zeros(edges.size)
    cdf[support:] = truncated.cdf(edges[support:])
    pmf = np.diff(cdf)
    # Σ t·p by numpy's pairwise sum, not np.dot: OpenBLAS threads ddot, which stalls on a busy machine.
    shift = _truncated_mean(noise_multiplier, sample_rate, domain.t_min, domain.t_max) - float(np.sum(centers * pmf))
    if abs(shift) >= domain.dt / 2:
        raise RuntimeError("Discrete mean differs significantly from continuous mean.")
    spectrum = fft.rfft(pmf)
    spectrum.setflags(write=False)
    return spectrum, domain.shift_right(shift)


def _spectrum_powers(spectrum: np.ndarray, counts: tuple[int, ...]) -> Iterator[np.ndarray]:
    """spectrum**k for each k of ``counts`` (increasing): by squaring, then one product per count.

    F^k_j = F^k_(j-1) · F^(k_j - k_(j-1)), the gap's power cached (epochs have equal gaps). Each
    power takes at most k complex products, each exact to a few ulps: the relative error stays
    within the k x machine-eps the round-off check in _certified_bounds allows. (numpy's
    ``F**k`` takes exp(k log F) for k > 100, ~15x slower.)
    """

    def power(exponent: int) -> np.ndarray:
        result, base = None, spectrum
        while True:
            if exponent & 1:
                result = base if result is None else result * base
            exponent >>= 1
            if not exponent:
                return result
            base = base * base

    gaps: dict[int, np.ndarray] = {}
    previous_count, previous = 0, None
    for count in counts:
        gap = count - previous_count
        if gap not in gaps:
            gaps[gap] = power(gap)
        previous = gaps[gap] if previous is None else previous * gaps[gap]
        previous_count = count
        yield previous


def _epsilon_bounds(composed: DiscretePRV, delta: float, delta_error: float, eps_error: float) -> tuple[float, float, float]:
    """``composed.compute_epsilon(delta, delta_error, eps_error)``, reading only the grid's t >= 0 half.

    Opacus' compute_epsilon forms the tail sums d1(t) = P[Y >= t], d2(t) = E[e^-Y; Y >= t] from
    the right end and looks up where e^t·d2 - d1 crosses -δ; a tail sum depends only on the
    grid to its right, so on the half t >= 0 they are the same numbers. Where the crossing is
    not inside that half (ε < 0: δ is large), the whole grid is used, as is Opacus' own check
    that longdouble eps x grid size stays below δ.
    """
    from opacus.accountants.analysis import prv as opacus_prv

    domain = composed.domain
    start = min(max(int(-domain.t_min / domain.dt), 0), domain.size - 2)
    start -= start % 2  # a Domain has an even size
    if start == 0 or np.finfo(np.longdouble).eps * domain.size > delta - delta_error:
        return composed.compute_epsilon(delta, delta_error, eps_error)
    half = opacus_prv.DiscretePRV(
        pmf=composed.pmf[start:],
        domain=opacus_prv.Domain(t_min=domain[start], t_max=domain.t_max, size=domain.size - start, shifts=domain.shifts),
    )
    try:
        return half.compute_epsilon(delta, delta_error, eps_error)
    except RuntimeError:  # the crossing is left of t = 0
        return composed.compute_epsilon(delta, delta_error, eps_error)


def _compose(power: np.ndarray, domain: Domain, steps: int) -> DiscretePRV:
    """The discretized PRV composed ``steps`` times, from its spectrum to the power ``steps``.

    Opacus' ``_compose_fourier`` after its ``rfft(pmf) ** steps``: the same irfft, roll (the sum
    of k grid points -n·mesh + i·mesh lands k-1 points, plus half the grid for even k, off the
    grid's own alignment) and domain shift (k x the mean correction).
    """
    from opacus.accountants.analysis import prv as opacus_prv
    from scipy import fft

    pmf = np.roll(fft.irfft(power, n=domain.size), steps - 1 + (domain.size // 2 if steps % 2 == 0 else 0))
    return opacus_prv.DiscretePRV(pmf=pmf, domain=domain.shift_right(domain.shifts * (steps - 1)))


def _certified_bounds(
    power: np.ndarray, domain: Domain, steps: int, delta: float, eps_error: float, where: str
) -> tuple[float, float, float]:
    """(eps_lower, eps_estimate, eps_upper) after ``steps`` compositions of the discretized PRV.

    ``power`` is the pmf's rfft to the power ``steps``; ε is Opacus'
    ``DiscretePRV.compute_epsilon`` at this k's eps_error (Gopi et al. Thm. 5.5). Raises
    _PrvOutOfRange if the result cannot be certified.
    """
    composed = _compose(power, domain, steps)
    pmf = composed.pmf
    # Float64 round-off of the FFT composition (relative error ~ steps x machine eps per Fourier
    # coefficient) is spread evenly over the grid; where the true pmf is below it, it shows up as
    # negative masses. Bound its effect on any tail sum (a δ) by 2 x grid size x the per-bin noise,
    # and certify ε at δ minus that bound. Opacus' own check (longdouble eps x size < δ) is 2048x
    # too weak for a float64 pmf.
    per_bin = max(-float(pmf.min()), steps * _F64_EPS * float(pmf.max()), 0.0)
    roundoff = 2 * pmf.size * per_bin
    if not roundoff <= delta / 10:
        raise _PrvOutOfRange(
            f"The PRV accountant cannot certify delta={delta} for {where}: float64 round-off in its "
            f"FFT composition is ~{roundoff:.2g}, not far enough below delta. Use accountant='rdp' "
            "(or a larger delta)."
        )
    try:
        bounds = _epsilon_bounds(composed, delta - roundoff, _PRV_DELTA_ERROR * delta, eps_error)
    except (RuntimeError, ValueError, IndexError, FloatingPointError) as exc:
        raise _PrvOutOfRange(
            f"The PRV accountant failed for {where}: {exc}. Use accountant='rdp' for this configuration."
        ) from exc
    lower, estimate, upper = (float(value) for value in bounds)
    half_width = (domain.t_max - domain.t_min) / 2
    if not (math.isfinite(upper) and math.isfinite(estimate)) or upper > half_width:
        raise _PrvOutOfRange(
            f"The PRV accountant returned ε={upper} outside its domain [-{half_width:.3g}, {half_width:.3g}] "
            f"for {where}. Use accountant='rdp' for this configuration."
        )
    return lower, estimate, upper


def _prv_pass(
    noise_multiplier: float, sample_rate: float, counts: tuple[int, ...], delta: float, mesh: float, max_points: int
) -> list[tuple[float, float, float, float] | _PrvOutOfRange]:
    """Per count k of ``counts`` (increasing), (lower, estimate, upper, eps_error_k) on one grid, or the error.

    The grid is the one the largest count K needs at this mesh (see the module docstring); k gets
    eps_error_k = mesh·sqrt(k·log(12/δ_err)/2). Raises _PrvOutOfRange when the grid itself is out
    of range (domain beyond _PRV_MAX_DOMAIN, more than ``max_points`` points, discretization failure).
    """
    delta_error = _PRV_DELTA_ERROR * delta
    largest = counts[-1]
    where = f"noise_multiplier={noise_multiplier}, sample_rate={sample_rate}, steps={largest}, delta={delta}"
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        # Half-width L of the privacy-loss domain, from an RDP tail bound (Gopi et al., Remark 5.6).
        eps_error = mesh * _hoeffding_factor(largest, delta_error)
        half_width = _safe_half_width(noise_multiplier, sample_rate, largest, eps_error, delta_error)
        if not math.isfinite(half_width) or half_width > _PRV_MAX_DOMAIN:
            raise _PrvOutOfRange(
                f"The PRV accountant cannot handle {where}: the privacy loss reaches {half_width:.3g} "
                "(ε is in the hundreds or more). Use accountant='rdp' for such weak privacy."
            )
        try:
            size = _prv_domain(half_width, mesh).size
        except RuntimeError as exc:  # Opacus' check that the aligned grid has this mesh
            raise _PrvOutOfRange(f"The PRV accountant failed for {where}: {exc!r}. Use accountant='rdp'.") from exc
        if size > max_points:
            raise _PrvOutOfRange(
                f"The PRV accountant would need a grid of {size:.3g} points (at most {max_points} are "
                f"allowed) for {where}. Use accountant='rdp' for this configuration."
            )
        try:
            spectrum, domain = _prv_spectrum(noise_multiplier, sample_rate, half_width, mesh)
        except (RuntimeError, ValueError, FloatingPointError) as exc:
            raise _PrvOutOfRange(
                f"The PRV accountant failed for {where}: {exc}. Use accountant='rdp' for this configuration."
            ) from exc
        results: list[tuple[float, float, float, float] | _PrvOutOfRange] = []
        for count, power in zip(counts, _spectrum_powers(spectrum, counts)):
            eps_error_k = mesh * _hoeffding_factor(count, delta_error)
            where_k = f"noise_multiplier={noise_multiplier}, sample_rate={sample_rate}, steps={count}, delta={delta}"
            try:
                results.append((*_certified_bounds(power, domain, count, delta, eps_error_k, where_k), eps_error_k))
            except _PrvOutOfRange as exc:
                results.append(exc)
    return results


def _coarse_mesh(steps: int, delta: float) -> float:
    """The mesh Gopi et al. Thm. 5.5 prescribes for ``steps`` compositions at eps_error = 0.01."""
    return _PRV_EPS_ERROR / _hoeffding_factor(steps, _PRV_DELTA_ERROR * delta)


@functools.lru_cache(maxsize=4096)
def _prv_coarse(
    noise_multiplier: float, sample_rate: float, counts: tuple[int, ...], delta: float
) -> tuple[tuple[float, float, float, float], ...]:
    """(lower, estimate, upper, eps_error) per count at Opacus' default eps_error = 0.01 for the largest.

    A count that cannot be certified on the shared grid is retried on its own grid (fewer points,
    less round-off); if that fails too, or the shared grid itself fails, raises _PrvOutOfRange.
    """
    mesh = _coarse_mesh(counts[-1], delta)
    results = _prv_pass(noise_multiplier, sample_rate, counts, delta, mesh, _PRV_MAX_POINTS)
    bounds = []
    for count, result in zip(counts, results):
        if isinstance(result, _PrvOutOfRange):
            if len(counts) == 1:
                raise result
            result = _prv_coarse(noise_multiplier, sample_rate, (count,), delta)[0]
        bounds.append(result)
    return tuple(bounds)


@functools.lru_cache(maxsize=4096)
def _prv_epsilons(noise_multiplier: float, sample_rate: float, counts: tuple[int, ...], delta: float) -> tuple[float, ...]:
    """Certified upper bound on ε per count (increasing, >= 1), refined where ε is small.

    Pass 1 is _prv_coarse. Count k asks for refinement when max(0.005·ε_k, 1e-3) is below
    0.9 x its pass-1 eps_error_k: pass 2 uses the one mesh that gives every such k
    eps_error_k = max(0.005·ε_k, 1e-3), coarsened if needed so the grid fits
    _PRV_REFINE_MAX_POINTS, and runs only if that mesh is below 0.9 x pass 1's. Both upper
    bounds are valid; per count we return the smaller. A count that pass 2 cannot certify keeps
    pass 1's bound. The meshes depend only on the inputs, so results are deterministic.
    """
    coarse = _prv_coarse(noise_multiplier, sample_rate, counts, delta)
    uppers = [upper for _, _, upper, _ in coarse]
    delta_error = _PRV_DELTA_ERROR * delta
    wanted = [
        fine / _hoeffding_factor(count, delta_error)
        for count, (_, estimate, _, eps_error) in zip(counts, coarse)
        if (fine := max(_PRV_REL_EPS_ERROR * estimate, _PRV_MIN_EPS_ERROR)) < 0.9 * eps_error
    ]
    if wanted:
        coarse_mesh = _coarse_mesh(counts[-1], delta)
        half_width = _safe_half_width(noise_multiplier, sample_rate, counts[-1], _PRV_EPS_ERROR, delta_error)
        # The grid size is 2L/mesh (L barely depends on the mesh); 0.9 leaves room for _prv_domain's widening.
        mesh = max(min(wanted), 2 * half_width / (0.9 * _PRV_REFINE_MAX_POINTS))
        if mesh < 0.9 * coarse_mesh:
            try:
                refined = _prv_pass(noise_multiplier, sample_rate, counts, delta, mesh, _PRV_REFINE_MAX_POINTS)
            except _PrvOutOfRange:
                refined = []  # the refinement is optional; pass 1 is already a valid bound
            for index, result in enumerate(refined):
                if not isinstance(result, _PrvOutOfRange):
                    uppers[index] = min(uppers[index], result[2])
    return tuple(max(upper, 0.0) for upper in uppers)  # (ε, δ)-DP with ε < 0 implies (0, δ)-DP


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
    if steps == 0 or noise_multiplier == 0 or accountant == "rdp":
        value = _epsilon_unchecked(noise_multiplier, sample_rate, steps, delta, accountant)
        return value <= budget, value
    try:
        lower, estimate, upper, eps_error = _prv_coarse(noise_multiplier, sample_rate, (steps,), delta)[0]
        if upper <= budget or lower > budget:
            fine = min(eps_error, max(_PRV_REL_EPS_ERROR * estimate, _PRV_MIN_EPS_ERROR))
            return upper <= budget, upper - eps_error + fine
        value = _prv_epsilons(noise_multiplier, sample_rate, (steps,), delta)[0]
        return value <= budget, value
    except _PrvOutOfRange:
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
    if accountant == "rdp":
        return _rdp_epsilon(noise_multiplier, sample_rate, steps, delta)
    return _prv_epsilons(noise_multiplier, sample_rate, (steps,), delta)[0]


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
    if accountant == "rdp" or sigma == 0:
        return [_epsilon_unchecked(sigma, q, int(count), d, accountant) for count in step_counts]
    counts = tuple(sorted({int(count) for count in step_counts if count > 0}))
    by_count = dict(zip(counts, _prv_epsilons(sigma, q, counts, d))) if counts else {}
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
    """
    x_min, x_max = math.log(_SIGMA_MIN), math.log(_SIGMA_MAX)
    close = -math.log(1 - tolerance)  # high - low <= tolerance·high  <=>  x_high - x_low <= close
    step = 0.3 * close
    low: tuple[float, float] | None = None  # (x, gap)
    high: tuple[float, float] | None = None
    recent: list[tuple[float, float]] = []
    x = min(max(math.log(start), x_min), x_max)
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
        if high is not None and (high[0] <= x_min or (low is not None and high[0] - low[0] <= close)):
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
    if accountant == "prv":
        # PRV is tighter than RDP: where RDP cannot reach the target below σ = 1e3, PRV may.
        start = _SIGMA_MAX if math.isinf(high) else high
        _, high, _ = _search_noise_multiplier(probe_for("prv"), start=start, slope=slope, tolerance=tolerance)
    if math.isinf(high):
        eps_high = _epsilon_or_nan(_SIGMA_MAX, q, n, d, accountant)
        reached = (
            f"ε = {eps_high:.4g}" if not math.isnan(eps_high)
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
