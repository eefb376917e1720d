"""One step of the sampled Gaussian mechanism in Rényi DP, and RDP's conversion to (ε, δ).

The private half of :mod:`dp_core.accounting` for ``accountant="rdp"``: its module docstring
states the math (Mironov 2017; Mironov, Talwar, Zhang 2019) and the conversion (Balle et al. 2020
Thm. 21). Here: the order grid, the one-step RDP curve summed in numpy from Opacus' terms, and ε.
The PRV accountant also reads this curve, to size its domain.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

__all__ = ["DEFAULT_ALPHA_INDEX", "RDP_ORDERS", "rdp_epsilon", "rdp_one_step"]

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

#: Positions in RDP_ORDERS of Opacus' default RDP orders (used for the PRV domain, as Opacus does).
DEFAULT_ALPHA_INDEX: tuple[int, ...] = tuple(
    RDP_ORDERS.index(a) for a in [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))
)

# One-step RDP in numpy (see rdp_one_step). Orders split as Opacus splits them.
_ORDERS = np.array(RDP_ORDERS)
_IS_INTEGER = np.array([float(order).is_integer() for order in RDP_ORDERS])
_SERIES_FLOOR = -30.0  # Opacus ends the fractional series after the first term pair below e^-30
_SERIES_MAX_TERMS = 1 << 17  # beyond this, Opacus computes the order (q=0.5, σ=1e3 needs ~6e4)
_CANCELLATION_LIMIT = 1e-3  # a partial sum below this x its largest term: Opacus computes the order


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
        log_s = np.stack(
            [
                (log_coef + i * log_q + j * log_1mq) + (i * i - i) / (2 * sigma**2) + log_e0,
                (log_coef + j * log_q + i * log_1mq) + (j * j - j) / (2 * sigma**2) + log_e1,
            ]
        )
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
        return float(
            opacus_rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=[order])[0]
        )
    except (ValueError, OverflowError, ZeroDivisionError, FloatingPointError):
        return math.inf


@functools.lru_cache(maxsize=1024)
def rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
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
def rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    from opacus.accountants.analysis import rdp as opacus_rdp

    rdp = rdp_one_step(noise_multiplier, sample_rate) * steps  # RDP composes additively
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # Opacus warns when the optimum is at the edge of the α grid; the bound is still valid.
        warnings.simplefilter("ignore")
        eps, _ = opacus_rdp.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    eps = float(eps)
    if math.isnan(eps):
        return math.inf
    # ε < 0 can come out of the conversion for large δ; (ε, δ)-DP with ε < 0 implies (0, δ)-DP.
    return max(eps, 0.0)
