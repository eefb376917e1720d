"""PRV accounting numerics (Gopi, Lee, Wutschitz 2021) on Opacus' ``accountants.analysis.prv``.

The private half of :mod:`dp_core.accounting` for ``accountant="prv"``: its module docstring
states the method, the certified bounds and how several step counts share one grid. Here: the
domain size from the RDP tail, the discretization and its spectrum, the FFT composition, the
certified ε read-off, and the two passes (coarse, then refined for small ε) over shared grids.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from dp_core._rdp import DEFAULT_ALPHA_INDEX, RDP_ORDERS, rdp_one_step
from dp_core.errors import ConfigError

if TYPE_CHECKING:
    from opacus.accountants.analysis.prv import DiscretePRV, Domain

__all__ = [
    "PRV_MIN_EPS_ERROR",
    "PRV_REL_EPS_ERROR",
    "PrvOutOfRange",
    "certified_bounds",
    "compose",
    "prv_coarse",
    "prv_domain",
    "prv_epsilons",
    "prv_spectrum",
    "spectrum_powers",
]

# PRV numerics (see _prv_pass).
_PRV_EPS_ERROR = 0.01  # Opacus' default eps_error
_PRV_DELTA_ERROR = 1e-3  # delta_error = 0.001·δ, Opacus' default
PRV_MIN_EPS_ERROR = 1e-3  # finest eps_error used when refining a small ε
PRV_REL_EPS_ERROR = 0.005  # refine so that eps_error is at most 0.5% of ε
_PRV_MAX_DOMAIN = 600.0  # privacy-loss domain [-L, L]; Opacus evaluates exp(t) on it (overflow > 709)
_PRV_MAX_POINTS = 1 << 23  # ~8.4M grid points (~1 GB of spectra and pmfs); beyond, raise ConfigError
_PRV_REFINE_MAX_POINTS = 1 << 22  # the optional refinement pass never costs more than this
_F64_EPS = float(np.finfo(np.float64).eps)


class PrvOutOfRange(ConfigError):
    """The PRV accountant cannot certify ε for this configuration (grid too large or too fine)."""


def _safe_half_width(
    noise_multiplier: float, sample_rate: float, steps: int, eps_error: float, delta_error: float
) -> float:
    """``opacus_prv.compute_safe_domain_size`` for one mechanism, from the cached one-step RDP curve.

    Same formula and orders (Opacus' ``RDPAccountant.DEFAULT_ALPHAS``) as Opacus, which recomputes
    the RDP curve twice per call. The RDP ε used here is never below Opacus' beyond round-off
    (failed orders are +inf, negatives clamped to 0). Nondecreasing in ``steps``.
    """
    from opacus.accountants.analysis import rdp as opacus_rdp

    one_step = rdp_one_step(noise_multiplier, sample_rate)[list(DEFAULT_ALPHA_INDEX)]
    orders = [RDP_ORDERS[i] for i in DEFAULT_ALPHA_INDEX]

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


def prv_domain(half_width: float, mesh: float) -> Domain:
    """Opacus' ``Domain.create_aligned(-L, L, mesh)``, widened to a size with small prime factors.

    create_aligned gives t = -n·mesh .. (n+1)·mesh, 2n+2 points; the roll in Opacus'
    ``_compose_fourier`` relies on that shape, so we keep it and only raise n (a wider domain is
    still safe) until 2n+2 = 2 x a 5-smooth number: the FFT of a size with a large prime factor
    is many times slower.
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
    where Opacus' numpy cdf pays numpy's per-call overhead at every point and this scalar one does not.
    The cdf is Opacus'
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
        return (
            -q * math.erfc((2 * z * sigma**2 - 1) / scale) / 2
            - (1 - q) * math.erfc((2 * z * sigma**2 + 1) / scale) / 2
            + 1.0
        )

    cdf_min = prv_cdf(t_min)
    mass = prv_cdf(t_max) - cdf_min

    def cdf(t: float) -> float:
        if t < t_min:
            return 0.0
        return (prv_cdf(t) - cdf_min) / mass if t < t_max else 1.0

    lower_exponent, upper_exponent = int(np.log10(np.abs(t_min))), int(np.log10(t_max))
    points = np.concatenate(
        [
            [t_min],
            -np.logspace(start=lower_exponent, stop=-5, num=10),
            [0],
            np.logspace(start=-5, stop=upper_exponent, num=10),
            [t_max],
        ]
    )
    mean = 0.0
    for left, right in zip(points[:-1].tolist(), points[1:].tolist()):
        integral, _ = integrate.quad(cdf, left, right, limit=500)
        mean += right * cdf(right) - left * cdf(left) - integral
    return mean


# 4 grids: enough for a calibration's last probes and the epochs' pass at the σ it returns; at most
# ~4 x 70 MB (complex spectra at the _PRV_MAX_POINTS cap), ~1 MB each for typical grids.
@functools.lru_cache(maxsize=4)
def prv_spectrum(
    noise_multiplier: float, sample_rate: float, half_width: float, mesh: float
) -> tuple[np.ndarray, Domain]:
    """(rfft of the discretized PRV's pmf, its Opacus ``Domain``) on [-L, L] at this mesh (cached).

    ``opacus_prv.discretize`` of the truncated PRV, as in ``PRVAccountant._get_dprv``: the mass
    of each bin, with the grid shifted so that its mean equals the continuous mean (Gopi et al.
    Sec. 5), and the same RuntimeError when that shift is half a bin or more. Opacus evaluates
    the cdf at both edges of every bin; we evaluate it once per edge, where it is not 0, and difference.
    """
    from opacus.accountants.analysis import prv as opacus_prv
    from scipy import fft

    domain = prv_domain(half_width, mesh)
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


def spectrum_powers(spectrum: np.ndarray, counts: tuple[int, ...]) -> Iterator[np.ndarray]:
    """spectrum**k for each k of ``counts`` (increasing): by squaring, then one product per count.

    F^k_j = F^k_(j-1) · F^(k_j - k_(j-1)), the gap's power cached (epochs have equal gaps). Each
    power takes at most k complex products, each exact to a few ulps: the relative error stays
    within the k x machine-eps the round-off check in certified_bounds allows. (numpy's
    ``F**k`` takes exp(k log F) for k > 100, which is slower.)
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


def _epsilon_bounds(
    composed: DiscretePRV, delta: float, delta_error: float, eps_error: float
) -> tuple[float, float, float]:
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
        domain=opacus_prv.Domain(
            t_min=domain[start], t_max=domain.t_max, size=domain.size - start, shifts=domain.shifts
        ),
    )
    try:
        return half.compute_epsilon(delta, delta_error, eps_error)
    except RuntimeError:  # the crossing is left of t = 0
        return composed.compute_epsilon(delta, delta_error, eps_error)


def compose(power: np.ndarray, domain: Domain, steps: int) -> DiscretePRV:
    """The discretized PRV composed ``steps`` times, from its spectrum to the power ``steps``.

    Opacus' ``_compose_fourier`` after its ``rfft(pmf) ** steps``: the same irfft, roll (the sum
    of k grid points -n·mesh + i·mesh lands k-1 points, plus half the grid for even k, off the
    grid's own alignment) and domain shift (k x the mean correction).
    """
    from opacus.accountants.analysis import prv as opacus_prv
    from scipy import fft

    pmf = np.roll(fft.irfft(power, n=domain.size), steps - 1 + (domain.size // 2 if steps % 2 == 0 else 0))
    return opacus_prv.DiscretePRV(pmf=pmf, domain=domain.shift_right(domain.shifts * (steps - 1)))


def certified_bounds(
    power: np.ndarray, domain: Domain, steps: int, delta: float, eps_error: float, where: str
) -> tuple[float, float, float]:
    """(eps_lower, eps_estimate, eps_upper) after ``steps`` compositions of the discretized PRV.

    ``power`` is the pmf's rfft to the power ``steps``; ε is Opacus'
    ``DiscretePRV.compute_epsilon`` at this k's eps_error (Gopi et al. Thm. 5.5). Raises
    PrvOutOfRange if the result cannot be certified.
    """
    composed = compose(power, domain, steps)
    pmf = composed.pmf
    # Float64 round-off of the FFT composition (relative error ~ steps x machine eps per Fourier
    # coefficient) is spread evenly over the grid; where the true pmf is below it, it shows up as
    # negative masses. Bound its effect on any tail sum (a δ) by 2 x grid size x the per-bin noise,
    # and certify ε at δ minus that bound. Opacus' own check (longdouble eps x size < δ) is 2048x
    # too weak for a float64 pmf.
    per_bin = max(-float(pmf.min()), steps * _F64_EPS * float(pmf.max()), 0.0)
    roundoff = 2 * pmf.size * per_bin
    if not roundoff <= delta / 10:
        raise PrvOutOfRange(
            f"The PRV accountant cannot certify delta={delta} for {where}: float64 round-off in its "
            f"FFT composition is ~{roundoff:.2g}, not far enough below delta. Use accountant='rdp' "
            "(or a larger delta)."
        )
    try:
        bounds = _epsilon_bounds(composed, delta - roundoff, _PRV_DELTA_ERROR * delta, eps_error)
    except (RuntimeError, ValueError, IndexError, FloatingPointError) as exc:
        raise PrvOutOfRange(
            f"The PRV accountant failed for {where}: {exc}. Use accountant='rdp' for this configuration."
        ) from exc
    lower, estimate, upper = (float(value) for value in bounds)
    half_width = (domain.t_max - domain.t_min) / 2
    if not (math.isfinite(upper) and math.isfinite(estimate)) or upper > half_width:
        raise PrvOutOfRange(
            f"The PRV accountant returned ε={upper} outside its domain [-{half_width:.3g}, {half_width:.3g}] "
            f"for {where}. Use accountant='rdp' for this configuration."
        )
    return lower, estimate, upper


def _prv_pass(
    noise_multiplier: float, sample_rate: float, counts: tuple[int, ...], delta: float, mesh: float, max_points: int
) -> list[tuple[float, float, float, float] | PrvOutOfRange]:
    """Per count k of ``counts`` (increasing), (lower, estimate, upper, eps_error_k) on one grid, or the error.

    The grid is the one the largest count K needs at this mesh (see the module docstring); k gets
    eps_error_k = mesh·sqrt(k·log(12/δ_err)/2). Raises PrvOutOfRange when the grid itself is out
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
            raise PrvOutOfRange(
                f"The PRV accountant cannot handle {where}: the privacy loss reaches {half_width:.3g} "
                "(ε is in the hundreds or more). Use accountant='rdp' for such weak privacy."
            )
        try:
            size = prv_domain(half_width, mesh).size
        except RuntimeError as exc:  # Opacus' check that the aligned grid has this mesh
            raise PrvOutOfRange(f"The PRV accountant failed for {where}: {exc!r}. Use accountant='rdp'.") from exc
        if size > max_points:
            raise PrvOutOfRange(
                f"The PRV accountant would need a grid of {size:.3g} points (at most {max_points} are "
                f"allowed) for {where}. Use accountant='rdp' for this configuration."
            )
        try:
            spectrum, domain = prv_spectrum(noise_multiplier, sample_rate, half_width, mesh)
        except (RuntimeError, ValueError, FloatingPointError) as exc:
            raise PrvOutOfRange(
                f"The PRV accountant failed for {where}: {exc}. Use accountant='rdp' for this configuration."
            ) from exc
        results: list[tuple[float, float, float, float] | PrvOutOfRange] = []
        for count, power in zip(counts, spectrum_powers(spectrum, counts)):
            eps_error_k = mesh * _hoeffding_factor(count, delta_error)
            where_k = f"noise_multiplier={noise_multiplier}, sample_rate={sample_rate}, steps={count}, delta={delta}"
            try:
                results.append((*certified_bounds(power, domain, count, delta, eps_error_k, where_k), eps_error_k))
            except PrvOutOfRange as exc:
                results.append(exc)
    return results


def _coarse_mesh(steps: int, delta: float) -> float:
    """The mesh Gopi et al. Thm. 5.5 prescribes for ``steps`` compositions at eps_error = 0.01."""
    return _PRV_EPS_ERROR / _hoeffding_factor(steps, _PRV_DELTA_ERROR * delta)


@functools.lru_cache(maxsize=4096)
def prv_coarse(
    noise_multiplier: float, sample_rate: float, counts: tuple[int, ...], delta: float
) -> tuple[tuple[float, float, float, float], ...]:
    """(lower, estimate, upper, eps_error) per count at Opacus' default eps_error = 0.01 for the largest.

    A count that cannot be certified on the shared grid is retried on its own grid (fewer points,
    less round-off); if that fails too, or the shared grid itself fails, raises PrvOutOfRange.
    """
    mesh = _coarse_mesh(counts[-1], delta)
    results = _prv_pass(noise_multiplier, sample_rate, counts, delta, mesh, _PRV_MAX_POINTS)
    bounds = []
    for count, result in zip(counts, results):
        if isinstance(result, PrvOutOfRange):
            if len(counts) == 1:
                raise result
            result = prv_coarse(noise_multiplier, sample_rate, (count,), delta)[0]
        bounds.append(result)
    return tuple(bounds)


@functools.lru_cache(maxsize=4096)
def prv_epsilons(
    noise_multiplier: float, sample_rate: float, counts: tuple[int, ...], delta: float
) -> tuple[float, ...]:
    """Certified upper bound on ε per count (increasing, >= 1), refined where ε is small.

    Pass 1 is prv_coarse. Count k asks for refinement when max(0.005·ε_k, 1e-3) is below
    0.9 x its pass-1 eps_error_k: pass 2 uses the one mesh that gives every such k
    eps_error_k = max(0.005·ε_k, 1e-3), coarsened if needed so the grid fits
    _PRV_REFINE_MAX_POINTS, and runs only if that mesh is below 0.9 x pass 1's. Both upper
    bounds are valid; per count we return the smaller. A count that pass 2 cannot certify keeps
    pass 1's bound. The meshes depend only on the inputs, so results are deterministic.
    """
    coarse = prv_coarse(noise_multiplier, sample_rate, counts, delta)
    uppers = [upper for _, _, upper, _ in coarse]
    delta_error = _PRV_DELTA_ERROR * delta
    wanted = [
        fine / _hoeffding_factor(count, delta_error)
        for count, (_, estimate, _, eps_error) in zip(counts, coarse)
        if (fine := max(PRV_REL_EPS_ERROR * estimate, PRV_MIN_EPS_ERROR)) < 0.9 * eps_error
    ]
    if wanted:
        coarse_mesh = _coarse_mesh(counts[-1], delta)
        half_width = _safe_half_width(noise_multiplier, sample_rate, counts[-1], _PRV_EPS_ERROR, delta_error)
        # The grid size is 2L/mesh (L barely depends on the mesh); 0.9 leaves room for prv_domain's widening.
        mesh = max(min(wanted), 2 * half_width / (0.9 * _PRV_REFINE_MAX_POINTS))
        if mesh < 0.9 * coarse_mesh:
            try:
                refined = _prv_pass(noise_multiplier, sample_rate, counts, delta, mesh, _PRV_REFINE_MAX_POINTS)
            except PrvOutOfRange:
                refined = []  # the refinement is optional; pass 1 is already a valid bound
            for index, result in enumerate(refined):
                if not isinstance(result, PrvOutOfRange):
                    uppers[index] = min(uppers[index], result[2])
    return tuple(max(upper, 0.0) for upper in uppers)  # (ε, δ)-DP with ε < 0 implies (0, δ)-DP
