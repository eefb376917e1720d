"""The privacy of releasing a sweep's best trial: Papernot–Steinke against dp-accounting, and the draws."""

from __future__ import annotations

import dataclasses
import math
import secrets
import textwrap
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant, compute_epsilon

from dp_core.accounting import RDP_ORDERS
from dp_core.errors import ConfigError
from sweeps.planning import plan_trial
from sweeps.planning.keys import trial_key
from sweeps.privacy.ledger import LedgerEntry
from sweeps.privacy.mechanism import TrialMechanism, largest_trial_epsilon, naive_composition_epsilon
from sweeps.privacy.selection import draw_trial_count, select_trials, sweep_epsilon, sweep_privacy
from sweeps.privacy.statement import shared_seed_note
from sweeps.privacy.sweep_secret import SELECTION, derived_seed
from sweeps.space import load_space

DELTA = 1e-5
# digits_quick's admitted σ (q = 128/1437, 20 epochs of 11 steps); σ = 1.1 dominates the others.
DIGITS_QUICK = [
    TrialMechanism(noise_multiplier=s, sample_rate=128 / 1437, steps=220) for s in (1.1, 1.5, 2.5, 4.0, 8.0)
]
# Two configurations whose RDP curves cross: few steps with large q, many steps with small q.
FEW_LARGE = TrialMechanism(noise_multiplier=1.0, sample_rate=0.5, steps=5)
MANY_SMALL = TrialMechanism(noise_multiplier=0.6, sample_rate=0.01, steps=1000)


def _dp_accounting_epsilon(event: dp_event.DpEvent) -> float:
    accountant = RdpAccountant(orders=RDP_ORDERS)
    accountant.compose(event)
    return accountant.get_epsilon(DELTA)


def _curve(mechanism: TrialMechanism) -> np.ndarray:
    accountant = RdpAccountant(orders=RDP_ORDERS)
    accountant.compose(mechanism.dp_event())
    return accountant.rdp


# ---- against dp-accounting's RepeatAndSelectDpEvent --------------------------------------------


@pytest.mark.parametrize(
    ("distribution", "eta", "shape"),
    [
        ("poisson", None, math.inf),
        ("truncated_negative_binomial", 1.0, 1.0),
    ],
)
def test_one_configuration_equals_dp_accounting_repeat_and_select(
    distribution: str, eta: float | None, shape: float
) -> None:
    mechanism = DIGITS_QUICK[0]
    expected = _dp_accounting_epsilon(dp_event.RepeatAndSelectDpEvent(mechanism.dp_event(), 10, shape))
    result = sweep_epsilon(
        trial_plans=[mechanism], trials_run=[mechanism] * 10, distribution=distribution, mean=10, eta=eta, delta=DELTA
    )
    assert result.sweep_epsilon == expected  # the same event, the same computation
    assert result.accountant == "rdp" and result.delta == DELTA


@pytest.mark.parametrize("eta", [0.0, 0.5, 3.0])
def test_other_negative_binomial_shapes_match_and_round_up(eta: float) -> None:
    # For η ≠ 1 the mean → γ inversion is a bisection; we account with the exact mean of the γ we
    # draw from, a hair above the requested mean, so ε may only be higher, by ~1e-9 relative.
    mechanism = DIGITS_QUICK[2]
    expected = _dp_accounting_epsilon(dp_event.RepeatAndSelectDpEvent(mechanism.dp_event(), 10, eta))
    result = sweep_epsilon(
        trial_plans=[mechanism],
        trials_run=[mechanism],
        distribution="truncated_negative_binomial",
        mean=10,
        eta=eta,
        delta=DELTA,
    )
    assert expected <= result.sweep_epsilon == pytest.approx(expected, rel=1e-8)


def test_digits_quick_sweep_epsilon_sits_between_one_trial_and_naive_composition() -> None:
    ran = [DIGITS_QUICK[0]] * 10  # K = 10 = the mean, each run the costliest configuration
    for distribution, eta in (
        ("poisson", None),
        ("truncated_negative_binomial", 1.0),
        ("truncated_negative_binomial", 0.0),
    ):
        result = sweep_epsilon(
            trial_plans=DIGITS_QUICK, trials_run=ran, distribution=distribution, mean=10, eta=eta, delta=DELTA
        )
        # dp_core's exact RDP (equal to numerical integration, see test_accounting) against
        # dp-accounting's, whose fractional-order series stops early at σ = 1.1 and is a little looser.
        oracle = _dp_accounting_epsilon(DIGITS_QUICK[0].dp_event())
        assert oracle * (1 - 1e-3) < result.largest_trial_epsilon <= oracle
        assert result.largest_trial_epsilon < result.sweep_epsilon < result.naive_composition_epsilon
        assert result.configurations == 5 and result.trials_run == 10
        # σ = 1.1 dominates every other configuration, so the mixture's curve is its curve.
        alone = sweep_epsilon(
            trial_plans=[DIGITS_QUICK[0]], trials_run=ran, distribution=distribution, mean=10, eta=eta, delta=DELTA
        )
        assert result.sweep_epsilon == alone.sweep_epsilon
    naive = _dp_accounting_epsilon(dp_event.SelfComposedDpEvent(DIGITS_QUICK[0].dp_event(), 10))
    assert naive * (1 - 1e-2) < result.naive_composition_epsilon <= naive


def test_naive_composition_of_cheap_draws_can_undercut_the_sweep_epsilon() -> None:
    # Not a theorem, and why both numbers are reported: the theorem charges every run the worst
    # configuration's curve, composition charges the runs that happened. Ten runs cycling through
    # digits_quick's σ: Poisson's sweep ε (18.2) exceeds their composition (16.2), while the
    # logarithmic distribution's (12.5) does not. Both are valid, for different releases.
    ran = [DIGITS_QUICK[i % 5] for i in range(10)]
    poisson = sweep_epsilon(trial_plans=DIGITS_QUICK, trials_run=ran, distribution="poisson", mean=10, delta=DELTA)
    logarithmic = sweep_epsilon(
        trial_plans=DIGITS_QUICK,
        trials_run=ran,
        distribution="truncated_negative_binomial",
        mean=10,
        eta=0.0,
        delta=DELTA,
    )
    assert logarithmic.sweep_epsilon < poisson.naive_composition_epsilon < poisson.sweep_epsilon


def test_mixture_of_configurations_applies_the_theorem_to_the_pointwise_max_curve() -> None:
    few, many = _curve(FEW_LARGE), _curve(MANY_SMALL)
    assert (few > many).any() and (many > few).any()  # the curves cross: no configuration dominates
    mean = 8.0
    # Papernot & Steinke 2022, Thm. 2 for the geometric distribution (η = 1, γ = 1/mean), written
    # out here independently of dp-accounting, on the pointwise maximum of the two curves:
    # ε'(λ) = ε(λ) + 2·min_λ̂ [(1 - 1/λ̂) ε(λ̂) + log(mean)/λ̂] + log(mean)/(λ - 1), then monotone in λ.
    orders = np.asarray(RDP_ORDERS)
    base = np.maximum(few, many)
    constant = 2 * np.min((1 - 1 / orders) * base + math.log(mean) / orders)
    selected = base + constant + math.log(mean) / (orders - 1)
    selected = np.minimum.accumulate(selected[::-1])[::-1]  # RDP is nondecreasing in λ
    oracle, _ = compute_epsilon(orders, selected, DELTA)

    result = sweep_epsilon(
        trial_plans=[FEW_LARGE, MANY_SMALL],
        trials_run=[FEW_LARGE, MANY_SMALL] * 4,
        distribution="truncated_negative_binomial",
        mean=mean,
        eta=1.0,
        delta=DELTA,
    )
    assert result.sweep_epsilon == pytest.approx(oracle, rel=1e-9)
    # Each configuration alone (dp-accounting's own event: 12.92 and 13.32) costs less than drawing
    # either (13.63): the maximum of the final ε's would understate the sweep's cost.
    alone = [
        _dp_accounting_epsilon(dp_event.RepeatAndSelectDpEvent(m.dp_event(), mean, 1.0))
        for m in (FEW_LARGE, MANY_SMALL)
    ]
    assert max(alone) + 0.2 < result.sweep_epsilon
    assert result.largest_trial_epsilon < result.sweep_epsilon < result.naive_composition_epsilon


def test_a_configuration_without_noise_makes_the_sweep_non_private() -> None:
    no_noise = TrialMechanism(noise_multiplier=0.0, sample_rate=0.1, steps=10)
    result = sweep_epsilon(
        trial_plans=[DIGITS_QUICK[0], no_noise], trials_run=[no_noise], distribution="poisson", mean=5, delta=DELTA
    )
    assert math.isinf(result.sweep_epsilon) and math.isinf(result.naive_composition_epsilon)
    assert math.isinf(largest_trial_epsilon([no_noise], delta=DELTA))
    assert naive_composition_epsilon([], delta=DELTA) == 0.0


def test_bad_distribution_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="distribution"):
        sweep_epsilon(trial_plans=DIGITS_QUICK, trials_run=[], distribution="uniform", mean=10, delta=DELTA)
    with pytest.raises(ConfigError, match="mean"):
        sweep_epsilon(trial_plans=DIGITS_QUICK, trials_run=[], distribution="poisson", mean=0.5, delta=DELTA)
    with pytest.raises(ConfigError, match="eta"):
        draw_trial_count("poisson", 10, np.random.default_rng(0), eta=1.0)
    with pytest.raises(ConfigError, match="eta"):
        draw_trial_count("truncated_negative_binomial", 10, np.random.default_rng(0), eta=-0.5)


# ---- drawing K ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distribution", "eta"),
    [
        ("poisson", None),
        ("truncated_negative_binomial", 1.0),
        ("truncated_negative_binomial", 0.0),
        ("truncated_negative_binomial", 0.5),
    ],
)
def test_trial_count_has_the_requested_mean(distribution: str, eta: float | None) -> None:
    rng = np.random.default_rng(0)
    counts = np.array([draw_trial_count(distribution, 10, rng, eta=eta) for _ in range(20_000)])
    assert counts.mean() == pytest.approx(10, rel=0.03)
    if distribution != "poisson":
        assert counts.min() >= 1


def test_truncated_negative_binomial_follows_definition_1() -> None:
    # P[K = k] = (1-γ)^k / (γ^-η - 1) · Π_{l<k} (l+η)/(l+1) (Papernot & Steinke, Definition 1).
    from dp_accounting.rdp.rdp_privacy_accountant import (
        _gamma_truncated_negative_binomial,
    )

    eta, mean = 2.0, 6.0
    gamma = _gamma_truncated_negative_binomial(eta, mean)
    rng = np.random.default_rng(1)
    counts = np.array([draw_trial_count("truncated_negative_binomial", mean, rng, eta=eta) for _ in range(20_000)])
    for k in (1, 2, 5):
        pmf = (1 - gamma) ** k / (gamma**-eta - 1) * math.prod((i + eta) / (i + 1) for i in range(k))
        assert np.mean(counts == k) == pytest.approx(pmf, abs=0.01)


# ---- a private-selection sweep ----------------------------------------------------------------

SPACE = """\
name: {name}
fixed: {{dataset: digits, model: mlp, epochs: 2, batch_size: 256, delta: 1.0e-5, accountant: rdp, seed: 7}}
axes:
  noise_multiplier: [1.0, 2.0, 0.3]
epsilon_budget: 20.0
search: grid
private_selection: {selection}
"""


def _space(tmp_path: Path, selection: str, name: str = "private") -> tuple[object, list]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(SPACE.format(name=name, selection=selection)))
    space = load_space(str(path))
    planned = [
        plan_trial(space.trial_config(v), name=f"trial_{i:04d}", axis_values=v)
        for i, v in enumerate(space.grid_axis_values())
    ]
    return space, [t for t in planned if t.planned_epsilon <= space.epsilon_budget]


def test_select_trials_draws_k_seeded_runs_from_the_admitted_points(tmp_path: Path) -> None:
    unseeded, admitted = _space(tmp_path, "{distribution: truncated_negative_binomial, mean: 20}")
    assert len(admitted) == 2  # σ = 0.3 plans ε over the budget
    with pytest.raises(ConfigError, match="root seed"):
        select_trials(unseeded, admitted)  # K and the picks come from the sweep's secret, never a default
    root = secrets.randbits(62)
    space = unseeded.with_secret_seed(root)
    runs = select_trials(space, admitted)
    assert [r.name for r in runs] == [r.name for r in select_trials(space, admitted)]  # a resumed sweep draws the same
    expected_count = draw_trial_count(
        "truncated_negative_binomial", 20, np.random.default_rng(derived_seed(root, SELECTION)), eta=1.0
    )
    assert len(runs) == expected_count >= 1
    names = {t.name: t for t in admitted}
    for run in runs:
        point, _, draw = run.name.partition("_draw")
        source = names[point]
        assert len(draw) == 10 and str(run.train_config["seed"]) not in run.name  # a random id, not the seed
        assert run.train_config == {**source.train_config, "seed": run.train_config["seed"]}  # its own seed
        assert run.plan == source.plan and run.axis_values == source.axis_values
        assert run.key == trial_key(run.train_config, name=run.name)
    assert len({r.train_config["seed"] for r in runs}) == len({r.key for r in runs}) == len(runs)

    privacy = sweep_privacy(space, admitted=admitted, trials_run=runs, delta=DELTA)
    direct = sweep_epsilon(
        trial_plans=[t.plan for t in admitted],
        trials_run=[r.plan for r in runs],
        distribution="truncated_negative_binomial",
        mean=20,
        eta=1.0,
        delta=DELTA,
    )
    assert privacy == direct
    # K is what the sweep ε needs unknown: not a metric, not in the plot's labels, not in the summary.
    assert set(privacy.metrics()) == {"sweep_epsilon", "naive_composition_epsilon", "largest_trial_epsilon_rdp"}
    assert "sweep ε" in " ".join(privacy.plot_lines()) and "naive composition" in " ".join(privacy.plot_lines())
    text = privacy.summary()
    assert f"sweep ε = {privacy.sweep_epsilon:.3f} (δ = 1e-05, RDP accountant)" in text
    assert not any(str(len(runs)) in label for label in privacy.plot_lines())
    assert f" {len(runs)} trial" not in text and "count is not shown" in text


def test_two_sweeps_without_a_seed_draw_different_trial_counts_and_picks(tmp_path: Path) -> None:
    unseeded, admitted = _space(tmp_path, "{distribution: truncated_negative_binomial, mean: 10}")
    draws = [select_trials(unseeded.with_secret_seed(secrets.randbits(62)), admitted) for _ in range(12)]
    assert len({len(runs) for runs in draws}) > 1  # K is not a function of the space file
    assert len({tuple(r.name for r in runs) for runs in draws}) == len(draws)
    assert len({r.train_config["seed"] for runs in draws for r in runs}) == sum(len(runs) for runs in draws)


def test_poisson_can_draw_no_trial_and_says_so(tmp_path: Path) -> None:
    space, admitted = _space(tmp_path, "{distribution: poisson, mean: 1}")
    seed = next(s for s in range(100) if np.random.default_rng(s).poisson(1.0) == 0)
    with pytest.raises(ConfigError, match="K = 0"):
        select_trials(space, admitted, rng=np.random.default_rng(seed))


def test_without_private_selection_only_naive_composition_is_reported(tmp_path: Path) -> None:
    space, admitted = _space(tmp_path, "{distribution: poisson, mean: 3}")
    plain = dataclasses.replace(space, private_selection=None)
    privacy = sweep_privacy(plain, admitted=admitted, trials_run=admitted, delta=DELTA)
    assert privacy.sweep_epsilon is None
    assert "sweep_epsilon" not in privacy.metrics()
    assert privacy.naive_composition_epsilon == naive_composition_epsilon(admitted, delta=DELTA)
    assert privacy.naive_composition_epsilon > privacy.largest_trial_epsilon
    text = privacy.summary()
    assert "does not bound" in text and "(δ = 1e-05, RDP accountant)" in text


def test_mechanism_from_logged_params_reads_mlflow_strings() -> None:
    params = {
        "noise_multiplier": "1.1",
        "sample_rate_resolved": "0.0890744606819763",
        "steps_planned": "220",
        "disable_dp": "False",
    }
    assert TrialMechanism.from_params(params) == TrialMechanism(
        noise_multiplier=1.1, sample_rate=0.0890744606819763, steps=220
    )
    assert TrialMechanism.from_params({**params, "disable_dp": "True"}).noise_multiplier == 0.0


def test_trials_that_share_a_seed_are_named_in_the_privacy_summary() -> None:
    def entries(seeds: list[int | None]) -> list[LedgerEntry]:  # as the ledger holds them
        return [
            LedgerEntry(
                key=f"k{i}",
                name=f"trial_{i:04d}",
                role="trial",
                noise_multiplier=1.0,
                sample_rate=0.1,
                steps=10,
                public_seed=seed,
            )
            for i, seed in enumerate(seeds)
        ]

    assert shared_seed_note(entries([None, None, None])) is None  # secret seeds: distinct by construction
    assert shared_seed_note(entries([11, 12, 13])) is None  # each trial its own seed
    note = shared_seed_note(entries([5, 5, 5]))  # fixed.seed: 5
    assert note is not None and "3 trials trained with 1 distinct seed:" in note and "not independent" in note
    note = shared_seed_note(entries([0, 1, 0, 1]))  # a seed axis beside an lr axis
    assert note is not None and "4 trials trained with 2 distinct seeds:" in note
