"""Confirmed frontiers side by side: read from a parent run, refused across δ or accountants, drawn, tabled."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest

from dp_core.config import ConfigError
from sweeps.results.compare import CSV_COLUMNS, SweepFrontier, check_comparable, plot_frontiers, write_frontiers_csv

PARAMS = {"space": "digits_quick", "delta": "1e-05", "accountant": "prv", "epsilon_budget": "8.0"}


def _metrics(means: dict[float, tuple[float, float, float]]) -> dict[str, float]:
    """bound -> (ε, mean, std) as the launcher logs them on the parent run (finish._confirmed_metrics)."""
    metrics = {"train_share": 0.5}
    for bound, (epsilon, mean, std) in means.items():
        metrics[f"confirmed_test_accuracy_mean.eps_le_{bound:g}"] = mean
        metrics[f"confirmed_test_accuracy_std.eps_le_{bound:g}"] = std
        metrics[f"confirmed_epsilon.eps_le_{bound:g}"] = epsilon
    return metrics


def _frontier(name: str, means: dict, **params: str) -> SweepFrontier:
    return SweepFrontier.from_run(name=name, run_id=name + "id", params={**PARAMS, **params}, metrics=_metrics(means))


def test_a_frontier_is_read_from_the_parent_runs_metrics_in_bound_order() -> None:
    frontier = _frontier("a", {8.0: (7.9, 0.9, 0.01), 0.5: (0.49, 0.6, 0.03), 2.0: (1.98, 0.8, 0.02)})
    assert [(r.bound, r.epsilon, r.test_mean, r.test_std) for r in frontier.results] == [
        (0.5, 0.49, 0.6, 0.03),
        (2.0, 1.98, 0.8, 0.02),
        (8.0, 7.9, 0.9, 0.01),
    ]
    assert (frontier.delta, frontier.accountant, frontier.space) == (1e-5, "prv", "digits_quick")


def test_a_sweep_without_a_confirmed_frontier_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^Expected a sweep with a confirmed frontier, but got sweep a "):
        SweepFrontier.from_run(name="a", run_id="1", params=PARAMS, metrics={"train_share": 0.5})


@pytest.mark.parametrize(("changed", "shown"), [({"delta": "1e-06"}, "δ = 1e-06"), ({"accountant": "rdp"}, "RDP")])
def test_sweeps_whose_delta_or_accountant_differ_are_refused(changed: dict, shown: str) -> None:
    a = _frontier("a", {1.0: (0.99, 0.7, 0.01)})
    b = _frontier("b", {1.0: (0.99, 0.72, 0.01)}, **changed)
    check_comparable([a, dataclasses.replace(b, delta=a.delta, accountant=a.accountant)])
    with pytest.raises(
        ConfigError, match=r"^Expected sweeps whose ε share one δ and one accountant, but got "
    ) as raised:
        check_comparable([a, b])
    assert "a (δ = 1e-05, PRV accountant)" in str(raised.value) and shown in str(raised.value)
    with pytest.raises(ConfigError):
        plot_frontiers("never.png", [a, b])


def test_the_plot_draws_one_series_per_sweep_with_its_error_bars_and_names_delta_and_accountant(tmp_path) -> None:
    a = _frontier("old", {0.5: (0.49, 0.60, 0.03), 2.0: (1.98, 0.80, 0.02), 8.0: (7.9, 0.90, math.nan)})
    b = _frontier("new", {0.5: (0.5, 0.65, 0.02), 2.0: (2.0, 0.84, 0.01)})
    png = tmp_path / "out" / "compare.png"
    ax = plot_frontiers(png, [a, b])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ax.get_xlabel() == "ε (δ = 1e-05, PRV accountant), log scale"
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 0 and line.get_linestyle() == "-"]
    assert [list(line.get_xdata()) for line in lines] == [[0.49, 1.98, 7.9], [0.5, 2.0]]
    assert [list(line.get_ydata()) for line in lines] == [[0.60, 0.80, 0.90], [0.65, 0.84]]
    assert lines[0].get_color() != lines[1].get_color()
    labels = ax.get_legend_handles_labels()[1]
    assert [label.split(":")[0] for label in labels] == ["old", "new"]
    low, high = ax.get_ylim()
    assert low <= 0.60 - 0.03 and high >= 0.90


def test_the_csv_has_a_row_per_sweep_and_bound(tmp_path: Path) -> None:
    a = _frontier("old", {0.5: (0.49, 0.60, 0.03), 2.0: (1.98, 0.80, 0.02)})
    b = _frontier("new", {0.5: (0.5, 0.65, 0.02)})
    with write_frontiers_csv(tmp_path / "compare.csv", [a, b]).open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["sweep"], r["bound"], float(r["test_accuracy_mean"]), r["delta"], r["accountant"]) for r in rows] == [
        ("old", "0.5", 0.60, "1e-05", "prv"),
        ("old", "2", 0.80, "1e-05", "prv"),
        ("new", "0.5", 0.65, "1e-05", "prv"),
    ]
