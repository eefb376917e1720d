"""A privacy filter for adaptive sweeps: Optuna's trials under one RDP budget fixed in advance.

Summing the RDP curves of the trials that ran bounds releasing them all when the trials were
fixed before any of them ran (a grid). Optuna chooses each trial's σ, sampling rate and length
from the results of earlier trials, so the privacy parameters are themselves adaptive, and the
sum of what ran is an *odometer reading*, not a bound fixed in advance. Composition theorems
for adaptively chosen parameters need the budget fixed first.

Feldman & Zrnic 2021, "Individual Privacy Accounting via a Rényi Filter" (NeurIPS,
arXiv:2008.11193), Thm. 3.1 with one budget for every individual: for a fixed order λ, if
each mechanism's RDP at λ may depend on the outcomes before it and the analyst stops before
the running sum would exceed B, the whole interaction is (λ, B)-RDP. The sweep's filter is
that rule at one order λ chosen before the sweep, and the reported ε is the conversion of
(λ, B) (Canonne, Kamath & Steinke 2020, Prop. 12): the ε the user asked for. A trial whose
planned RDP at λ would take the sum over B is not run (skipped, recorded with the reason).

The order: for a Gaussian-like composition ρ(λ) = aλ, the conversion is smallest at
λ = 1 + √(log(1/δ)/a), with a fixed by the target ε; we take the nearest order of
:data:`dp_core.accounting.RDP_ORDERS`. Any order gives a valid bound; this one admits the most.
"""

from __future__ import annotations

import dataclasses
import math

from dp_core.accounting import RDP_ORDERS, rdp_curve
from dp_core.errors import require_in_range, require_positive
from sweeps.privacy.mechanism import TrialMechanism

__all__ = ["RdpFilter", "ACCOUNTANT"]

ACCOUNTANT = "rdp"


def _conversion_overhead(order: float, delta: float) -> float:
    """ε − ρ of the RDP → (ε, δ) conversion at one order (Canonne, Kamath & Steinke 2020, Prop. 12)."""
    return math.log1p(-1 / order) - math.log(delta * order) / (order - 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RdpFilter:
    """Admit trials while the sum of their RDP at ``order`` stays within ``capacity``; ε = ``epsilon``."""

    epsilon: float
    delta: float
    order: float  # the Rényi order at which the filter adds the trials' RDP up

    def __post_init__(self) -> None:
        require_positive(self.epsilon, key="sweep_epsilon_budget")
        require_in_range(self.delta, key="delta", low=0, high=1, low_open=True, high_open=True)
        if self.capacity <= 0:
            raise ValueError(
                f"Expected sweep_epsilon_budget to leave RDP room at order {self.order:g}, but got "
                f"sweep_epsilon_budget={self.epsilon:g} (δ = {self.delta:g}): the conversion alone costs "
                f"{_conversion_overhead(self.order, self.delta):.3f}. Raise the budget."
            )

    @classmethod
    def for_budget(cls, *, epsilon: float, delta: float) -> RdpFilter:
        """The filter whose (ε, δ) is ``epsilon`` at the order that admits the most (module docstring)."""
        require_positive(epsilon, key="sweep_epsilon_budget")
        log_inverse_delta = math.log(1 / delta)
        root_a = math.sqrt(log_inverse_delta + epsilon) - math.sqrt(log_inverse_delta)  # √a, from a + 2√(aL) = ε
        best = 1 + math.sqrt(log_inverse_delta) / root_a
        order = min((o for o in RDP_ORDERS if o > 1.01), key=lambda o: abs(o - best))
        return cls(epsilon=float(epsilon), delta=float(delta), order=float(order))

    @property
    def capacity(self) -> float:
        """B: the RDP at ``order`` whose conversion is exactly ``epsilon``."""
        return self.epsilon - _conversion_overhead(self.order, self.delta)

    def cost(self, mechanism: TrialMechanism) -> float:
        """The whole planned run's RDP at the filter's order."""
        if mechanism.steps == 0:
            return 0.0
        if mechanism.noise_multiplier == 0:
            return math.inf
        index = RDP_ORDERS.index(self.order) if self.order in RDP_ORDERS else None
        curve = rdp_curve(
            noise_multiplier=mechanism.noise_multiplier, sample_rate=mechanism.sample_rate, steps=mechanism.steps
        )
        return float(curve[index]) if index is not None else math.inf

    def rejects(self, spent: float, mechanism: TrialMechanism) -> str | None:
        """Why a trial of ``mechanism`` may not run after ``spent`` (RDP at the order), or None."""
        cost = self.cost(mechanism)
        if spent + cost <= self.capacity:
            return None
        return (
            f"the sweep's privacy filter is full: this trial's RDP at order {self.order:g} ({cost:.3f}) on top of "
            f"the {spent:.3f} the sweep has run would exceed {self.capacity:.3f}, which is sweep ε = "
            f"{self.epsilon:g} (δ = {self.delta:g}, {ACCOUNTANT.upper()} accountant)"
        )

    def describe(self) -> str:
        return (
            f"RDP filter at order {self.order:g} (Feldman & Zrnic 2021): ε = {self.epsilon:g} "
            f"(δ = {self.delta:g}, {ACCOUNTANT.upper()} accountant)"
        )
