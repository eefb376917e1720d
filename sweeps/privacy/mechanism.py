"""One trial's DP-SGD mechanism, its RDP curve, and the ε of trials composed or taken alone.

Naive composition (:func:`naive_composition_epsilon`) bounds releasing every trial of a sweep, so
also the best one; :mod:`sweeps.privacy.selection` has the theory and Papernot–Steinke's tighter
bound for releasing the best of a random number of trials. Every ε here is from the RDP
accountant (dp-accounting's RDP analysis at :data:`dp_core.accounting.RDP_ORDERS`) and carries its δ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from dp_core.accounting import RDP_ORDERS, rdp_curve
from dp_core.errors import ConfigError, require, require_in_range
from dp_core.privacy_plan import PrivacyPlan

__all__ = [
    "ACCOUNTANT",
    "TrialMechanism",
    "as_mechanism",
    "check_delta",
    "dp_accounting_rdp",
    "epsilon_of",
    "largest_trial_epsilon",
    "naive_composition_epsilon",
    "quiet_absl",
]

ACCOUNTANT = "rdp"  # Papernot–Steinke is an RDP result; every ε of sweeps.privacy's bounds is RDP's


def dp_accounting_rdp() -> Any:
    """dp_accounting's RDP module, or an actionable error."""
    try:
        from dp_accounting.rdp import rdp_privacy_accountant
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The privacy of a sweep's selection is computed with dp-accounting: pip install 'dp-accounting>=0.4'."
        ) from error
    for name in (
        "_compute_rdp_repeat_and_select",
        "_gamma_truncated_negative_binomial",
        "_truncated_negative_binomial_mean",
        "compute_epsilon",
    ):
        if not hasattr(rdp_privacy_accountant, name):  # pragma: no cover - a future dp-accounting
            raise ImportError(
                f"dp_accounting.rdp.rdp_privacy_accountant has no {name} (the Papernot–Steinke analysis "
                "this module reuses); install a dp-accounting release that has RepeatAndSelectDpEvent, "
                "e.g. 0.4 to 0.6."
            )
    return rdp_privacy_accountant


@contextlib.contextmanager
def quiet_absl() -> Iterator[None]:
    # dp-accounting logs a warning for every fractional order whose series does not converge; it
    # then uses RDP = ∞ there, which only loosens ε. Not worth a console line per order per trial.
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrialMechanism:
    """One trial's DP-SGD mechanism: ``steps`` Poisson-sampled Gaussian steps (σ = 0: no privacy)."""

    noise_multiplier: float  # σ
    #: q, the Poisson sampling rate of every step.
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
            sample_rate=float(params["sample_rate_resolved"]),
            steps=int(float(params["steps_planned"])),
        )

    def dp_event(self) -> Any:
        """The dp-accounting description: ``SelfComposed(PoissonSampled(q, Gaussian(σ)), steps)``."""
        from dp_accounting import dp_event

        return dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(self.sample_rate, dp_event.GaussianDpEvent(self.noise_multiplier)),
            self.steps,
        )


def as_mechanism(trial: Any) -> TrialMechanism:
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


def _rdp_curve(mechanism: TrialMechanism) -> np.ndarray:
    """RDP of the whole run, from dp_core's vectorised sampled-Gaussian RDP: for composing many
    runs (an Optuna sweep's hundreds of distinct configurations), where dp-accounting's is too slow
    per run (``docs/benchmarks.md``). Equal to Opacus' and to numerical integration; dp-accounting's
    fractional-order series stops early at small σ and is then slightly larger (looser), never smaller."""
    return rdp_curve(
        noise_multiplier=mechanism.noise_multiplier, sample_rate=mechanism.sample_rate, steps=mechanism.steps
    )


def epsilon_of(curve: np.ndarray, delta: float) -> float:
    """(ε, δ) from an RDP curve: min over λ of the conversion of Canonne, Kamath, Steinke 2020, Prop. 12."""
    if np.all(np.isinf(curve)):
        return math.inf  # no order with a finite bound: no privacy (σ = 0)
    with quiet_absl():
        eps, _ = dp_accounting_rdp().compute_epsilon(RDP_ORDERS, curve, delta)
    return float(eps)


def check_delta(delta: float) -> None:
    require_in_range(delta, key="delta", low=0, high=1, low_open=True, high_open=True)


def naive_composition_epsilon(trials_run: Sequence[Any], *, delta: float) -> float:
    """ε of releasing *every* trial run (so also the best): RDP composition of their curves.

    ``trials_run`` lists each run once per time it ran (PrivacyPlan, PlannedTrial or
    TrialMechanism). Zero trials release nothing: 0.0.
    """
    check_delta(delta)
    if not trials_run:
        return 0.0
    total = np.sum([_rdp_curve(as_mechanism(t)) for t in trials_run], axis=0)
    return epsilon_of(total, delta)


def largest_trial_epsilon(trial_plans: Sequence[Any], *, delta: float) -> float:
    """The largest RDP ε of any one of these trials alone (what a report of 'the best model' shows)."""
    check_delta(delta)
    if not trial_plans:
        raise ConfigError("Expected at least one trial to take the largest ε of, but got none.")
    return max(epsilon_of(_rdp_curve(m), delta) for m in {as_mechanism(t) for t in trial_plans})
