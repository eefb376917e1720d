"""Privacy of releasing the best trial: Papernot–Steinke random stopping.

A sweep that trains K models on the same data and releases the most accurate one leaks more than
that model's own ε: which model wins depends on the data of every run. Two bounds cover it.

Naive composition
    Releasing the best trial is post-processing of releasing all K trials, so the sweep is at most
    as private as the composition of its trials. We compose them with RDP (the trials' RDP curves
    add up order by order; Mironov 2017, Prop. 1) and convert once to (ε, δ). It grows roughly
    like √K · ε and holds for any search, adaptive or not, with any K.

Random stopping (``private_selection:`` in a space)
    Papernot & Steinke 2022, "Hyperparameter Tuning with Renyi Differential Privacy" (ICLR,
    arXiv:2110.03620): if the number of runs K is *random*, drawn independently of the data from
    a truncated negative binomial TNB(η, γ) (η = 0: logarithmic, η = 1: geometric) or a Poisson
    distribution, and each run is an independent execution of one mechanism M with RDP curve
    ε(λ), releasing the best run is (λ, ε'(λ))-RDP with

      TNB (Thm. 2):     ε'(λ) = ε(λ) + (1+η)(1 - 1/λ̂) ε(λ̂) + (1+η) log(1/γ)/λ̂ + log E[K] / (λ-1)
                        for every λ̂ ≥ 1 (the minimum over λ̂ is taken);
      Poisson (Thm. 6): ε'(λ) = ε(λ) + μ δ̂ + log μ / (λ-1), where M is (ε̂, δ̂)-DP with
                        ε̂ = log(1 + 1/(λ-1)) and μ = E[K].

    dp-accounting implements both for ``RepeatAndSelectDpEvent``; we call the same function its
    RDP accountant calls (``_compute_rdp_repeat_and_select``), because our base curve is not one
    DpEvent (below). The tests check that for a single configuration the result equals
    ``RdpAccountant().compose(RepeatAndSelectDpEvent(event, mean, shape))`` exactly.

The base mechanism of a grid sweep
    With ``private_selection`` every run first picks one of the C admitted grid points uniformly
    at random (with replacement, independently of the data and of earlier runs), then trains it
    with its own random seed. That run is one mechanism M, a mixture of the configurations' mechanisms
    M_c, whose output includes the chosen configuration (not the seed: a PRNG seed reproduces the
    noise, so it must never be released). For neighbouring D, D' its Rényi divergence of order
    λ > 1 is

      exp((λ-1) D_λ(M(D) || M(D'))) = Σ_c (1/C) exp((λ-1) D_λ(M_c(D) || M_c(D')))
                                    ≤ max_c exp((λ-1) ε_c(λ)),

    so ε_M(λ) ≤ max_c ε_c(λ): the pointwise maximum over λ of the configurations' RDP curves is
    a valid RDP curve for M (even if the configuration were not released, by the joint
    quasi-convexity of Rényi divergence; van Erven & Harremoës 2014, Thm. 13). The theorem is
    applied to that maximum curve. Taking the maximum of the per-configuration *final* ε instead
    can understate the cost: the theorem combines the curve at several orders (λ and λ̂, or δ̂ at
    ε̂), and these may be set by different configurations (the tests have such a pair).

What the guarantee needs, and what :mod:`sweeps.space` therefore refuses with private_selection:
an adaptive search (Optuna proposes from earlier results, so runs are not i.i.d.), ASHA pruning
(a run's length depends on other runs' results), a ``trials`` cap or a seed axis (K and the seeds
are the sweep's to draw), and federated trials (their mechanism is not one sampled Gaussian).
The launcher also refuses ``--time-budget`` with it: trials not started by the deadline would
truncate K's distribution. The ε covers releasing *one* model and its hyperparameters, the best
by a fixed score (each run's best validation accuracy over its epochs, all of its checkpoints being
covered by its own RDP), and nothing else: not K (knowing K turns the random count back into a
fixed one), not the other trials' results, not the frontier. K, the picks and each run's seed
derive from the sweep's secret root seed (:mod:`sweeps.privacy.sweep_secret`), so nobody with the space
file can compute them; K is never printed, logged as a metric or drawn in the plot, and what is
released is ``release/selected_model.json`` alone. The rest is in MLflow for the people running
the sweep; releasing it is covered only by naive composition, which counts every run in the
sweep's ledger (:mod:`sweeps.privacy.ledger`), the ``--audit`` run included. Neither bound replaces
the other: the theorem charges every run the worst configuration, composition charges the runs
that happened, so for a cheap draw composition can be the smaller number.

Every ε here is from the RDP accountant (dp-accounting's RDP analysis at
:data:`dp_core.accounting.RDP_ORDERS`) and carries its δ.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dp_core.accounting import RDP_ORDERS
from dp_core.errors import ConfigError, require, require_choice
from sweeps.planning import PlannedTrial
from sweeps.privacy.mechanism import (
    TrialMechanism,
    as_mechanism,
    check_delta,
    dp_accounting_rdp,
    epsilon_of,
    largest_trial_epsilon,
    naive_composition_epsilon,
    quiet_absl,
)
from sweeps.privacy.statement import SelectionPrivacy
from sweeps.space import SELECTION_DISTRIBUTIONS, SearchSpace

__all__ = [
    "DISTRIBUTIONS",
    "draw_trial_count",
    "select_trials",
    "sweep_epsilon",
    "sweep_privacy",
]

DISTRIBUTIONS: tuple[str, ...] = SELECTION_DISTRIBUTIONS  # of the trial count K
_DEFAULT_ETA = 1.0  # TNB shape η = 1: the geometric distribution


@functools.lru_cache(maxsize=512)
def _dp_accounting_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one sampled Gaussian step at each of RDP_ORDERS, from dp-accounting (read-only)."""
    from dp_accounting import dp_event

    accountant = dp_accounting_rdp().RdpAccountant(orders=RDP_ORDERS)
    with quiet_absl():
        accountant.compose(dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(noise_multiplier)))
    curve = accountant.rdp
    curve.setflags(write=False)
    return curve


def _selection_curve(mechanism: TrialMechanism) -> np.ndarray:
    """RDP of the whole run for Papernot–Steinke: dp-accounting's curve, the one its
    ``RepeatAndSelectDpEvent`` uses, so that the sweep ε is exactly dp-accounting's."""
    if mechanism.steps == 0:
        return np.zeros(len(RDP_ORDERS))
    if mechanism.noise_multiplier == 0:
        return np.full(len(RDP_ORDERS), math.inf)
    return mechanism.steps * _dp_accounting_one_step(mechanism.noise_multiplier, mechanism.sample_rate)


def _check_distribution(distribution: str, mean: float, eta: float | None) -> float:
    """Validate; return the TNB shape η (math.inf for Poisson: dp-accounting's convention)."""
    require_choice(distribution, key="distribution", choices=DISTRIBUTIONS)
    ok = isinstance(mean, (int, float)) and not isinstance(mean, bool) and math.isfinite(mean) and mean >= 1
    require(ok, key="mean", value=mean, allowed="to be a finite number >= 1 (the expected number of trials)")
    if distribution == "poisson":
        require(
            eta is None,
            key="eta",
            value=eta,
            allowed="to be absent for distribution: poisson (eta is the truncated negative binomial's shape)",
        )
        return math.inf
    shape = _DEFAULT_ETA if eta is None else eta
    ok = isinstance(shape, (int, float)) and not isinstance(shape, bool) and math.isfinite(shape) and shape >= 0
    require(
        ok,
        key="eta",
        value=eta,
        allowed="to be a finite number >= 0 (0: logarithmic, 1: geometric distribution of the trial count)",
    )
    return float(shape)


def _tnb_gamma(shape: float, mean: float) -> float:
    """γ of TNB(η, γ) with (at least) this mean: dp-accounting's own inversion, so that the
    distribution drawn from is exactly the one its analysis assumes."""
    return float(dp_accounting_rdp()._gamma_truncated_negative_binomial(shape, float(mean)))


def _accounting_mean(distribution: str, mean: float, shape: float) -> float:
    """E[K] of the distribution actually drawn from.

    For TNB the inversion mean → γ is a bisection that returns the smaller γ (mean ≥ requested, to
    ~1e-9 relative). We account with the exact mean of that γ: then log E[K] in Thm. 2 is exact,
    and the γ dp-accounting re-derives from it is at most ours, which only raises ε'.
    """
    if distribution == "poisson" or mean == 1:
        return float(mean)
    return float(dp_accounting_rdp()._truncated_negative_binomial_mean(_tnb_gamma(shape, mean), shape))


def sweep_epsilon(
    *,
    trial_plans: Sequence[Any],
    trials_run: Sequence[Any],
    distribution: str,
    mean: float,
    delta: float,
    eta: float | None = None,
) -> SelectionPrivacy:
    """ε of releasing the best of K ~ ``distribution(mean[, eta])`` runs, each drawn from ``trial_plans``.

    ``trial_plans`` are the configurations a run may draw (PrivacyPlan, PlannedTrial or
    TrialMechanism; duplicates do not matter); ``trials_run`` the runs that were executed, for the
    naive-composition comparison. The base curve is the pointwise maximum of the configurations'
    RDP curves (module docstring), and Papernot–Steinke's Thm. 2 (TNB) or Thm. 6 (Poisson) is
    applied to it with dp-accounting's implementation, then converted to (ε, δ).
    """
    check_delta(delta)
    shape = _check_distribution(distribution, mean, eta)
    if not trial_plans:
        raise ConfigError("Expected at least one configuration for the sweep to draw from, but got none.")
    mechanisms = {as_mechanism(t) for t in trial_plans}
    base = np.max([_selection_curve(m) for m in mechanisms], axis=0)  # RDP of the random-configuration run
    if np.all(np.isinf(base)):
        selected = math.inf  # a configuration without noise: no privacy, selected or not
    else:
        rdp = dp_accounting_rdp()
        with quiet_absl():
            curve = rdp._compute_rdp_repeat_and_select(
                np.asarray(RDP_ORDERS), base, _accounting_mean(distribution, mean, shape), shape
            )
        selected = epsilon_of(np.asarray(curve, dtype=float), delta)
    return SelectionPrivacy(
        sweep_epsilon=selected,
        naive_composition_epsilon=naive_composition_epsilon(trials_run, delta=delta),
        largest_trial_epsilon=largest_trial_epsilon(list(mechanisms), delta=delta),
        trials_run=len(trials_run),
        configurations=len(mechanisms),
        distribution=distribution,
        mean=float(mean),
        eta=None if distribution == "poisson" else shape,
        delta=float(delta),
    )


def sweep_privacy(
    space: SearchSpace,
    *,
    admitted: Sequence[Any],
    trials_run: Sequence[Any],
    delta: float,
    adaptive: bool = False,
    sweep_filter: Any = None,
) -> SelectionPrivacy:
    """The launcher's report: :func:`sweep_epsilon` with ``space.private_selection``, else naive composition only.

    ``admitted`` are the configurations the sweep could run (for Optuna, pass the trials run);
    ``adaptive``: Optuna chose them, so their RDP sum is an odometer reading and only
    ``sweep_filter`` (a :class:`sweeps.privacy.adaptive.RdpFilter`, if the space sets one) gives a bound.
    """
    selection = getattr(space, "private_selection", None)
    if selection is not None:
        return sweep_epsilon(
            trial_plans=admitted,
            trials_run=trials_run,
            distribution=selection.distribution,
            mean=selection.mean,
            eta=selection.eta,
            delta=delta,
        )
    candidates = list(admitted) or list(trials_run)
    return SelectionPrivacy(
        sweep_epsilon=None,
        naive_composition_epsilon=naive_composition_epsilon(trials_run, delta=delta),
        largest_trial_epsilon=largest_trial_epsilon(candidates, delta=delta) if candidates else 0.0,
        trials_run=len(trials_run),
        configurations=len({as_mechanism(t) for t in candidates}),
        distribution=None,
        mean=None,
        eta=None,
        delta=float(delta),
        adaptive=adaptive,
        filter_description=sweep_filter.describe() if sweep_filter is not None else None,
        filter_epsilon=sweep_filter.epsilon if sweep_filter is not None else None,
    )


# ---- drawing the trials -----------------------------------------------------------------------


def draw_trial_count(distribution: str, mean: float, rng: np.random.Generator, *, eta: float | None = None) -> int:
    """Draw K, the number of runs, from the distribution Papernot–Steinke's theorems are about.

    poisson: K ~ Poisson(mean) (K = 0 is possible: nothing is released). truncated_negative_binomial:
    P[K = k] ∝ (1-γ)^k · Π_{l<k} (l+η)/(l+1) for k ≥ 1 (their Definition 1), with γ chosen so that
    E[K] = mean; η = 0 is the logarithmic distribution, η = 1 the geometric one.
    """
    shape = _check_distribution(distribution, mean, eta)
    if distribution == "poisson":
        return int(rng.poisson(mean))
    if mean == 1:
        return 1  # γ = 1: the distribution is a point mass at 1
    gamma = _tnb_gamma(shape, mean)
    if shape == 0:
        # numpy's logseries(p): P[k] = -p^k / (k log(1-p)); with p = 1-γ, Definition 1 at η = 0.
        return int(rng.logseries(1 - gamma))
    # numpy's negative_binomial(η, γ) has P[k] = C(k+η-1, k) γ^η (1-γ)^k for k ≥ 0, real η > 0 allowed;
    # conditioning on k ≥ 1 (rejection) gives Definition 1 exactly.
    for _ in range(1_000_000):
        count = int(rng.negative_binomial(shape, gamma))
        if count >= 1:
            return count
    raise ConfigError(  # pragma: no cover - P[K=0]^1e6 for any mean > 1 + 1e-5
        f"Expected a truncated negative binomial that can be drawn from, but got mean={mean}, eta={shape} "
        "(almost all mass at 0); use a larger mean."
    )


def select_trials(
    space: SearchSpace, admitted: Sequence[PlannedTrial], *, rng: np.random.Generator | None = None
) -> list[PlannedTrial]:
    """The runs of a private-selection sweep: K ~ the space's distribution, each a uniform draw.

    Draws are with replacement and independent of the data (the admitted grid points are decided by
    planned ε alone). Each draw also gets its own random training seed (replacing any
    ``fixed.seed``), so two draws of one grid point are two independent runs and every run is the
    same random mechanism, as the theorem requires. A run is named ``<grid point>_draw<id>`` with
    a random id: never the draw index (a name ``_draw7`` would tell whoever sees it that at least 8
    trials ran) and never the seed. ``rng`` defaults to one seeded from the sweep's root seed
    (secret unless the space sets ``seed:``), so K and the picks are unknown to anyone without it,
    and a resumed sweep draws the same trials. Raises ConfigError when K = 0 (Poisson): the sweep
    then releases nothing.
    """
    from sweeps.planning.keys import trial_key
    from sweeps.privacy.sweep_secret import SELECTION, derived_seed

    selection = space.private_selection
    if selection is None:
        raise ConfigError(f"Expected private_selection in {space.source} to select trials at random, but it is absent.")
    if not admitted:
        raise ConfigError(
            f"Expected at least one admitted grid point to draw trials from in {space.source}, but got none."
        )
    if rng is None:
        if space.seed is None:
            raise ConfigError(
                f"Expected the sweep's root seed to draw the trials of {space.source}, but it is not drawn yet."
            )
        rng = np.random.default_rng(derived_seed(space.seed, SELECTION))
    count = draw_trial_count(selection.distribution, selection.mean, rng, eta=selection.eta)
    if count == 0:
        raise ConfigError(
            f"private_selection in {space.source} drew K = 0 trials (poisson, mean {selection.mean:g}): the sweep "
            "releases nothing, which the guarantee covers. Drawing again would change the distribution the "
            "guarantee is about; use distribution: truncated_negative_binomial (K >= 1 always) or a larger mean."
        )
    picks = rng.integers(len(admitted), size=count)
    seeds = rng.integers(2**62, size=count)  # two equal seeds among K: probability ~K²/2⁶³
    ids = rng.integers(2**40, size=count)  # names: two equal among K: probability ~K²/2⁴¹
    runs = []
    for index, seed, draw in zip(picks, seeds, ids):
        trial = admitted[int(index)]
        flat = {**trial.train_config, "seed": int(seed)}
        name = f"{trial.name}_draw{int(draw):010x}"
        runs.append(dataclasses.replace(trial, name=name, key=trial_key(flat, name=name), train_config=flat))
    return runs
