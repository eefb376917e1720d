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
by a fixed score (each run's best test accuracy over its epochs, all of its checkpoints being
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

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dp_core._validate import ConfigError, require, require_choice, require_in_range
from dp_core.accounting import RDP_ORDERS, rdp_curve
from dp_core.plan import PrivacyPlan
from sweeps.space import SELECTION_DISTRIBUTIONS

if TYPE_CHECKING:
    from sweeps.results.frontier import Point
    from sweeps.planning import PlannedTrial
    from sweeps.space import SearchSpace

__all__ = [
    "DISTRIBUTIONS",
    "ACCOUNTANT",
    "TrialMechanism",
    "SelectionPrivacy",
    "draw_trial_count",
    "select_trials",
    "sweep_epsilon",
    "naive_composition_epsilon",
    "largest_trial_epsilon",
    "sweep_privacy",
]

DISTRIBUTIONS: tuple[str, ...] = SELECTION_DISTRIBUTIONS  # of the trial count K
ACCOUNTANT = "rdp"  # Papernot–Steinke is an RDP result; every ε of this module is RDP's
_DEFAULT_ETA = 1.0  # TNB shape η = 1: the geometric distribution


def _dp_accounting() -> Any:
    """dp_accounting's RDP module, or an actionable error."""
    try:
        from dp_accounting.rdp import rdp_privacy_accountant
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The privacy of a sweep's selection is computed with dp-accounting: pip install 'dp-accounting>=0.4'."
        ) from error
    for name in ("_compute_rdp_repeat_and_select", "_gamma_truncated_negative_binomial",
                 "_truncated_negative_binomial_mean", "compute_epsilon"):
        if not hasattr(rdp_privacy_accountant, name):  # pragma: no cover - a future dp-accounting
            raise ImportError(
                f"dp_accounting.rdp.rdp_privacy_accountant has no {name} (the Papernot–Steinke analysis "
                "this module reuses); install a dp-accounting release that has RepeatAndSelectDpEvent, "
                "e.g. 0.4 to 0.6."
            )
    return rdp_privacy_accountant


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    # dp-accounting logs a warning for every fractional order whose series does not converge; it
    # then uses RDP = ∞ there, which only loosens ε. Not worth a console line per order per trial.
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---- the mechanism of one trial ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrialMechanism:
    """One trial's DP-SGD mechanism: ``steps`` Poisson-sampled Gaussian steps (σ = 0: no privacy)."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        require_in_range(self.noise_multiplier, key="noise_multiplier", low=0, high=math.inf)
        require_in_range(self.sample_rate, key="sample_rate", low=0, high=1, low_open=True)
        ok = isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 0
        require(ok, key="steps", value=self.steps, allowed="to be an integer >= 0")

    @classmethod
    def from_plan(cls, plan: PrivacyPlan) -> TrialMechanism:
        """The mechanism a planned run may execute: all planned steps (a run never takes more)."""
        sigma = plan.noise_multiplier if plan.private else 0.0
        return cls(noise_multiplier=float(sigma), sample_rate=float(plan.sample_rate), steps=int(plan.planned_steps))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrialMechanism:
        """From a trial's logged params (``PlannedTrial.params()``; MLflow hands them back as strings)."""
        disabled = str(params.get("disable_dp", False)).lower() == "true"
        sigma = params.get("noise_multiplier")
        return cls(
            noise_multiplier=0.0 if disabled or sigma in (None, "None") else float(sigma),
            sample_rate=float(params["sample_rate_resolved"]), steps=int(float(params["steps_planned"])),
        )

    @classmethod
    def from_points(cls, points: Iterable[Point]) -> list[TrialMechanism]:
        """One mechanism per distinct trial among frontier points (each trial logs one point an epoch)."""
        seen: dict[str, TrialMechanism] = {}
        for point in points:
            key = point.run_id or point.trial
            if key not in seen:
                seen[key] = cls.from_params(point.params)
        return list(seen.values())

    def dp_event(self) -> Any:
        """The dp-accounting description: ``SelfComposed(PoissonSampled(q, Gaussian(σ)), steps)``."""
        from dp_accounting import dp_event

        return dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(self.sample_rate, dp_event.GaussianDpEvent(self.noise_multiplier)),
            self.steps,
        )


def shared_seed_note(entries: Iterable[Any]) -> str | None:
    """A line for the privacy summary when runs among the ledger's ``entries`` trained with the
    same seed (``fixed.seed``, or a seed axis with other axes beside it), else None.

    Runs that share a seed share their noise stream and Poisson masks: they are not the
    independent mechanisms that any composition of the trials is about. Only seeds the space
    itself fixes are in the ledger; the secret ones are distinct by construction.
    """
    seeds = [entry.public_seed for entry in entries if entry.role == "trial" and entry.public_seed is not None]
    distinct = len(set(seeds))
    if distinct == len(seeds):
        return None
    return (f"  {len(seeds)} trials trained with {distinct} distinct seed{'' if distinct == 1 else 's'}: trials "
            "that share a seed share one noise stream, so they are not independent mechanisms and no composition "
            "above bounds releasing them together. Without fixed.seed or a seed axis each trial draws its own seed.")


def _mechanism(trial: Any) -> TrialMechanism:
    """A TrialMechanism from itself, a PrivacyPlan, or anything with a ``.plan`` (a PlannedTrial)."""
    if isinstance(trial, TrialMechanism):
        return trial
    plan = trial if isinstance(trial, PrivacyPlan) else getattr(trial, "plan", None)
    if not isinstance(plan, PrivacyPlan):
        raise ConfigError(
            f"Expected a PrivacyPlan, a PlannedTrial or a TrialMechanism (one DP-SGD run), but got "
            f"{type(trial).__name__}; federated trials have no single RDP curve."
        )
    return TrialMechanism.from_plan(plan)


@functools.lru_cache(maxsize=512)
def _dp_accounting_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one sampled Gaussian step at each of RDP_ORDERS, from dp-accounting (read-only)."""
    from dp_accounting import dp_event

    accountant = _dp_accounting().RdpAccountant(orders=RDP_ORDERS)
    with _quiet_absl():
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


def _rdp_curve(mechanism: TrialMechanism) -> np.ndarray:
    """RDP of the whole run, from dp_core's vectorised sampled-Gaussian RDP: for composing many
    runs (an Optuna sweep's hundreds of distinct configurations), where dp-accounting's took 0.2 s
    per run. Equal to Opacus' and to numerical integration; dp-accounting's fractional-order series
    stops early at small σ and is then slightly larger (looser), never smaller."""
    return rdp_curve(noise_multiplier=mechanism.noise_multiplier, sample_rate=mechanism.sample_rate,
                     steps=mechanism.steps)


def _epsilon_of(curve: np.ndarray, delta: float) -> float:
    """(ε, δ) from an RDP curve: min over λ of the conversion of Canonne, Kamath, Steinke 2020, Prop. 12."""
    if np.all(np.isinf(curve)):
        return math.inf  # no order with a finite bound: no privacy (σ = 0)
    with _quiet_absl():
        eps, _ = _dp_accounting().compute_epsilon(RDP_ORDERS, curve, delta)
    return float(eps)


def _check_delta(delta: float) -> None:
    require_in_range(delta, key="delta", low=0, high=1, low_open=True, high_open=True)


# ---- the two bounds ---------------------------------------------------------------------------


def naive_composition_epsilon(trials_run: Sequence[Any], *, delta: float) -> float:
    """ε of releasing *every* trial run (so also the best): RDP composition of their curves.

    ``trials_run`` lists each run once per time it ran (PrivacyPlan, PlannedTrial or
    TrialMechanism). Zero trials release nothing: 0.0.
    """
    _check_delta(delta)
    if not trials_run:
        return 0.0
    total = np.sum([_rdp_curve(_mechanism(t)) for t in trials_run], axis=0)
    return _epsilon_of(total, delta)


def largest_trial_epsilon(trial_plans: Sequence[Any], *, delta: float) -> float:
    """The largest RDP ε of any one of these trials alone (what a report of 'the best model' shows)."""
    _check_delta(delta)
    if not trial_plans:
        raise ConfigError("Expected at least one trial to take the largest ε of, but got none.")
    return max(_epsilon_of(_rdp_curve(m), delta) for m in {_mechanism(t) for t in trial_plans})


def _check_distribution(distribution: str, mean: float, eta: float | None) -> float:
    """Validate; return the TNB shape η (math.inf for Poisson: dp-accounting's convention)."""
    require_choice(distribution, key="distribution", choices=DISTRIBUTIONS)
    ok = isinstance(mean, (int, float)) and not isinstance(mean, bool) and math.isfinite(mean) and mean >= 1
    require(ok, key="mean", value=mean, allowed="to be a finite number >= 1 (the expected number of trials)")
    if distribution == "poisson":
        require(eta is None, key="eta", value=eta,
                allowed="to be absent for distribution: poisson (eta is the truncated negative binomial's shape)")
        return math.inf
    shape = _DEFAULT_ETA if eta is None else eta
    ok = isinstance(shape, (int, float)) and not isinstance(shape, bool) and math.isfinite(shape) and shape >= 0
    require(ok, key="eta", value=eta,
            allowed="to be a finite number >= 0 (0: logarithmic, 1: geometric distribution of the trial count)")
    return float(shape)


def _tnb_gamma(shape: float, mean: float) -> float:
    """γ of TNB(η, γ) with (at least) this mean: dp-accounting's own inversion, so that the
    distribution drawn from is exactly the one its analysis assumes."""
    return float(_dp_accounting()._gamma_truncated_negative_binomial(shape, float(mean)))


def _accounting_mean(distribution: str, mean: float, shape: float) -> float:
    """E[K] of the distribution actually drawn from.

    For TNB the inversion mean → γ is a bisection that returns the smaller γ (mean ≥ requested, to
    ~1e-9 relative). We account with the exact mean of that γ: then log E[K] in Thm. 2 is exact,
    and the γ dp-accounting re-derives from it is at most ours, which only raises ε'.
    """
    if distribution == "poisson" or mean == 1:
        return float(mean)
    return float(_dp_accounting()._truncated_negative_binomial_mean(_tnb_gamma(shape, mean), shape))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelectionPrivacy:
    """What releasing the model a sweep selects costs, each ε from the RDP accountant at ``delta``.

    ``sweep_epsilon``: Papernot–Steinke's bound for releasing the best of a random number of
    runs (None when the sweep ran a fixed set of trials: then no bound below naive composition is
    known). ``naive_composition_epsilon``: RDP composition over the ``trials_run`` runs, a bound
    for releasing all of them. ``largest_trial_epsilon``: the largest ε of one configuration alone,
    over the ``configurations`` (distinct (σ, q, steps) mechanisms) the sweep could run, which is
    *not* a bound for the selection.
    """

    sweep_epsilon: float | None
    naive_composition_epsilon: float
    largest_trial_epsilon: float
    trials_run: int
    configurations: int
    distribution: str | None
    mean: float | None
    eta: float | None
    delta: float
    accountant: str = ACCOUNTANT
    adaptive: bool = False  # Optuna chose the trials from earlier results (sweeps.privacy.adaptive)
    filter_description: str | None = None  # the sweep's RDP filter, whose ε is filter_epsilon
    filter_epsilon: float | None = None
    audit_runs: int = 0  # of trials_run, the audit's retraining with canaries (--audit)
    confirmation_runs: int = 0  # of trials_run, the confirmation stage's retraining with fresh seeds

    def metrics(self) -> dict[str, float]:
        """For the parent run: ``sweep_epsilon`` (with private selection), ``naive_composition_epsilon``, …

        With private selection the trial count stays out: knowing K turns the random count back
        into a fixed one, and the sweep ε no longer holds.
        """
        values = {"naive_composition_epsilon": self.naive_composition_epsilon,
                  "largest_trial_epsilon_rdp": self.largest_trial_epsilon}
        if self.sweep_epsilon is not None:
            values["sweep_epsilon"] = self.sweep_epsilon
        else:
            values["trials_run"] = float(self.trials_run)
        if self.filter_epsilon is not None:
            values["sweep_filter_epsilon"] = self.filter_epsilon
        return values

    def plot_lines(self) -> dict[str, float]:
        """Labelled sweep-level ε values for the frontier plot (finite values only; no trial count)."""
        lines = {}
        if self.sweep_epsilon is not None:
            lines["sweep ε (best of K random trials, RDP)"] = self.sweep_epsilon
        if self.filter_epsilon is not None:
            lines["sweep ε (RDP filter, adaptive)"] = self.filter_epsilon
        name = "RDP sum of the trials run (odometer)" if self.adaptive else "naive composition of the trials (RDP)"
        lines[name] = self.naive_composition_epsilon
        return {label: value for label, value in lines.items() if math.isfinite(value)}

    def summary(self) -> str:
        """Console lines: each ε with its accountant and δ (with private selection, without K)."""
        tag = f"(δ = {self.delta:g}, {self.accountant.upper()} accountant)"
        runs = f"{self.trials_run} trial{'' if self.trials_run == 1 else 's'}"
        largest = (f"  largest ε of one configuration alone: ε = {_fmt(self.largest_trial_epsilon)} {tag}; "
                   "not a bound for the selected model")
        head = "Privacy of releasing the selected model (the search included):"
        extra = [f"the confirmation stage's {self.confirmation_runs} retrainings" if self.confirmation_runs else "",
                 "the audit's retraining" if self.audit_runs else ""]
        among = f" ({' and '.join(e for e in extra if e)} among them)" if any(extra) else ""
        if self.adaptive:
            reading = (f"  RDP sum over the {runs} run{among}: ε = {_fmt(self.naive_composition_epsilon)} {tag}; an odometer "
                       "reading, not a bound: Optuna chose each trial from earlier results")
            if self.filter_epsilon is not None:
                bound = (f"  sweep ε = {_fmt(self.filter_epsilon)} {tag}: releasing every trial, whatever Optuna chose "
                         f"({self.filter_description}; trials that did not fit were skipped)")
                return "\n".join([head, bound, reading, largest])
            note = ("  No bound fixed in advance covers these adaptively chosen trials: set sweep_epsilon_budget in the "
                    "space for an RDP filter whose ε holds for the whole sweep (sweeps.privacy.adaptive).")
            return "\n".join([head, reading, largest, note])
        naive = (f"  naive composition over the {runs} run{among}: ε = {_fmt(self.naive_composition_epsilon)} "
                 f"{tag}; covers releasing every trial")
        if self.sweep_epsilon is None:
            note = ("  The selected model's own ε does not bound what the sweep leaks: which trial wins depends on "
                    "the data of every trial. With a fixed set of trials, naive composition is the bound; add "
                    "private_selection: {distribution: poisson, mean: ...} to the space for Papernot–Steinke's, "
                    "which grows with log E[K] rather than with K.")
            return "\n".join([head, naive, largest, note])
        naive = (f"  naive composition over the trials run (K and the audit, if any; their count is not shown): "
                 f"ε = {_fmt(self.naive_composition_epsilon)} {tag}; covers releasing every trial")
        shape = "" if self.eta is None else f", η = {self.eta:g}"
        selected = (f"  sweep ε = {_fmt(self.sweep_epsilon)} {tag}: releasing the best of K trials with its "
                    f"hyperparameters (not its seed, not K), K ~ {self.distribution} (mean {self.mean:g}{shape}), "
                    f"each run a uniform draw among the admitted grid points ({self.configurations} distinct DP "
                    "mechanisms; Papernot & Steinke 2022)")
        note = ("  The sweep ε covers that one model only (release/selected_model.json): K, the other trials and the "
                "frontier (for the team, in MLflow) are covered by naive composition, which charges the trials that "
                "ran rather than the worst one each time.")
        return "\n".join([head, selected, naive, largest, note])


def _fmt(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.3f}"


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
    _check_delta(delta)
    shape = _check_distribution(distribution, mean, eta)
    if not trial_plans:
        raise ConfigError("Expected at least one configuration for the sweep to draw from, but got none.")
    mechanisms = {_mechanism(t) for t in trial_plans}
    base = np.max([_selection_curve(m) for m in mechanisms], axis=0)  # RDP of the random-configuration run
    if np.all(np.isinf(base)):
        selected = math.inf  # a configuration without noise: no privacy, selected or not
    else:
        rdp = _dp_accounting()
        with _quiet_absl():
            curve = rdp._compute_rdp_repeat_and_select(
                np.asarray(RDP_ORDERS), base, _accounting_mean(distribution, mean, shape), shape
            )
        selected = _epsilon_of(np.asarray(curve, dtype=float), delta)
    return SelectionPrivacy(
        sweep_epsilon=selected,
        naive_composition_epsilon=naive_composition_epsilon(trials_run, delta=delta),
        largest_trial_epsilon=largest_trial_epsilon(list(mechanisms), delta=delta),
        trials_run=len(trials_run), configurations=len(mechanisms), distribution=distribution,
        mean=float(mean), eta=None if distribution == "poisson" else shape, delta=float(delta),
    )


def sweep_privacy(space: SearchSpace, *, admitted: Sequence[Any], trials_run: Sequence[Any], delta: float,
                  adaptive: bool = False, sweep_filter: Any = None) -> SelectionPrivacy:
    """The launcher's report: :func:`sweep_epsilon` with ``space.private_selection``, else naive composition only.

    ``admitted`` are the configurations the sweep could run (for Optuna, pass the trials run);
    ``adaptive``: Optuna chose them, so their RDP sum is an odometer reading and only
    ``sweep_filter`` (a :class:`sweeps.privacy.adaptive.RdpFilter`, if the space sets one) gives a bound.
    """
    selection = getattr(space, "private_selection", None)
    if selection is not None:
        return sweep_epsilon(trial_plans=admitted, trials_run=trials_run, distribution=selection.distribution,
                             mean=selection.mean, eta=selection.eta, delta=delta)
    candidates = list(admitted) or list(trials_run)
    return SelectionPrivacy(
        sweep_epsilon=None, naive_composition_epsilon=naive_composition_epsilon(trials_run, delta=delta),
        largest_trial_epsilon=largest_trial_epsilon(candidates, delta=delta) if candidates else 0.0,
        trials_run=len(trials_run), configurations=len({_mechanism(t) for t in candidates}),
        distribution=None, mean=None, eta=None, delta=float(delta), adaptive=adaptive,
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


def select_trials(space: SearchSpace, admitted: Sequence[PlannedTrial], *,
                  rng: np.random.Generator | None = None) -> list[PlannedTrial]:
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
        raise ConfigError(f"Expected at least one admitted grid point to draw trials from in {space.source}, but got none.")
    if rng is None:
        if space.seed is None:
            raise ConfigError(f"Expected the sweep's root seed to draw the trials of {space.source}, but it is not drawn yet.")
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
