"""The RDP filter of adaptive sweeps: its ε is the conversion of its budget, and it never lets the sum past it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

from dp_core.accounting import RDP_ORDERS, rdp_curve
from sweeps.privacy.adaptive import RdpFilter
from sweeps.privacy.mechanism import TrialMechanism


@pytest.mark.parametrize("epsilon", [1.0, 8.0, 40.0, 300.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-7])
def test_the_filter_budget_converts_back_to_its_epsilon_by_dp_accounting(epsilon: float, delta: float) -> None:
    sweep_filter = RdpFilter.for_budget(epsilon=epsilon, delta=delta)
    assert sweep_filter.order in RDP_ORDERS
    # dp-accounting's own conversion (an independent implementation) of (order, capacity).
    converted, order = compute_epsilon([sweep_filter.order], [sweep_filter.capacity], delta)
    assert order == sweep_filter.order and converted == pytest.approx(epsilon, rel=1e-12)


def test_the_chosen_order_is_the_best_one_for_a_gaussian_like_sum() -> None:
    # For ρ(λ) = aλ with a + 2√(a log(1/δ)) = ε, the conversion's minimum is at the chosen order.
    epsilon, delta = 40.0, 1e-5
    chosen = RdpFilter.for_budget(epsilon=epsilon, delta=delta)
    a = (math.sqrt(math.log(1 / delta) + epsilon) - math.sqrt(math.log(1 / delta))) ** 2
    orders = [o for o in RDP_ORDERS if o > 1.01]
    _, best = compute_epsilon(orders, [a * o for o in orders], delta)
    assert abs(chosen.order - best) <= 0.2


def test_the_filter_admits_until_the_next_trial_would_pass_its_capacity() -> None:
    trial = TrialMechanism(noise_multiplier=1.5, sample_rate=0.05, steps=200)
    sweep_filter = RdpFilter.for_budget(epsilon=20.0, delta=1e-5)
    cost = sweep_filter.cost(trial)
    index = RDP_ORDERS.index(sweep_filter.order)
    assert cost == pytest.approx(rdp_curve(noise_multiplier=1.5, sample_rate=0.05, steps=200)[index])
    spent, admitted = 0.0, 0
    while sweep_filter.rejects(spent, trial) is None:
        spent += cost
        admitted += 1
    assert admitted == math.floor(sweep_filter.capacity / cost) and spent <= sweep_filter.capacity
    assert "privacy filter is full" in sweep_filter.rejects(spent, trial)
    assert math.isinf(sweep_filter.cost(TrialMechanism(noise_multiplier=0.0, sample_rate=0.05, steps=1)))


def test_a_budget_the_conversion_alone_exceeds_is_refused() -> None:
    with pytest.raises(ValueError, match="Raise the budget"):
        RdpFilter(epsilon=0.01, delta=1e-9, order=1.1)
    assert np.isfinite(RdpFilter.for_budget(epsilon=0.05, delta=1e-5).capacity)
