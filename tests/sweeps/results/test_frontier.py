"""Tests for sweeps.results.frontier: Pareto set against brute force, buckets, CSV round trip, plot, table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from sweeps.results.frontier import (
    ConfirmedConfig,
    Point,
    best_per_bucket,
    default_buckets,
    format_frontier_table,
    pareto_front,
    write_frontier_csv,
)
from sweeps.results.frontier_plot import plot_frontier

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pt(eps: float, acc: float, i: int = 0, **params) -> Point:
    return Point(epsilon=eps, accuracy=acc, run_id=f"run{i}", trial=f"trial_{i:04d}", epoch=i % 5 + 1, params=params)


def _random_points(rng: np.random.Generator, n: int, *, coarse: bool) -> list[Point]:
    # Coarse grids force many ties in ε, in accuracy, and exact duplicates.
    if coarse:
        eps = rng.integers(1, 6, size=n).astype(float)
        acc = rng.integers(0, 5, size=n) / 4
    else:
        eps = rng.uniform(0.1, 10, size=n)
        acc = rng.uniform(0, 1, size=n)
    return [_pt(float(e), float(a), i, lr=float(e) / 10) for i, (e, a) in enumerate(zip(eps, acc))]


def _brute_force_front(points: list[Point]) -> list[int]:
    """Indices of non-dominated points, keeping only the first of identical (ε, acc) points."""
    keep = []
    for i, p in enumerate(points):
        dominated = any(
            q.epsilon <= p.epsilon and q.accuracy >= p.accuracy and (q.epsilon < p.epsilon or q.accuracy > p.accuracy)
            for q in points
        )
        earlier_twin = any((q.epsilon, q.accuracy) == (p.epsilon, p.accuracy) for q in points[:i])
        if not dominated and not earlier_twin:
            keep.append(i)
    return keep


@pytest.mark.parametrize("n", [0, 1, 2, 5, 20, 100, 400])
@pytest.mark.parametrize("coarse", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pareto_front_matches_brute_force(n: int, coarse: bool, seed: int) -> None:
    pts = _random_points(np.random.default_rng(seed), n, coarse=coarse)
    front = pareto_front(pts)
    assert sorted(id(p) for p in front) == sorted(id(pts[i]) for i in _brute_force_front(pts))
    assert all(a.epsilon < b.epsilon and a.accuracy < b.accuracy for a, b in zip(front, front[1:]))


def test_pareto_front_edge_cases() -> None:
    assert pareto_front([]) == []
    single = _pt(1.0, 0.5)
    assert pareto_front([single]) == [single]
    # Identical (ε, acc): the first in input order is kept.
    a, b = _pt(1.0, 0.5, 1), _pt(1.0, 0.5, 2)
    assert [p.run_id for p in pareto_front([a, b])] == ["run1"]
    assert [p.run_id for p in pareto_front([b, a])] == ["run2"]
    # Ties in ε: only the most accurate; ties in accuracy: only the cheapest.
    assert pareto_front([_pt(2.0, 0.6, 1), _pt(2.0, 0.7, 2)])[0].run_id == "run2"
    assert pareto_front([_pt(3.0, 0.6, 1), _pt(2.0, 0.6, 2)])[0].run_id == "run2"
    # A non-private point that beats every private one is on the front, last; NaNs are ignored.
    front = pareto_front([_pt(math.inf, 0.99, 1), _pt(1.0, 0.8, 2), _pt(0.5, math.nan, 3)])
    assert [p.run_id for p in front] == ["run2", "run1"]


def test_pareto_front_sorted_strictly_increasing() -> None:
    pts = _random_points(np.random.default_rng(7), 300, coarse=False)
    front = pareto_front(pts)
    assert len(front) > 1
    assert [p.epsilon for p in front] == sorted(p.epsilon for p in front)
    assert all(a.accuracy < b.accuracy for a, b in zip(front, front[1:]))


def test_best_per_bucket_known_answers() -> None:
    pts = [
        _pt(0.8, 0.60, 1),
        _pt(1.5, 0.70, 2),
        _pt(1.2, 0.70, 3),  # same accuracy as run2 at lower ε: wins the tie
        _pt(2.5, 0.65, 4),
        _pt(4.0, 0.80, 5),
        _pt(4.0, 0.80, 6),  # identical to run5: first seen wins
        _pt(math.inf, 0.95, 7),
    ]
    got = best_per_bucket(pts, [0.5, 1.0, 2.0, 3.0, 5.0, math.inf])
    assert [(b, p.run_id if p else None) for b, p in got] == [
        (0.5, None),
        (1.0, "run1"),
        (2.0, "run3"),
        (3.0, "run3"),
        (5.0, "run5"),
        (math.inf, "run7"),
    ]
    assert best_per_bucket([], [1.0]) == [(1.0, None)]


def test_default_buckets() -> None:
    assert default_buckets(3.0) == [0.5, 1, 2, 3]
    assert default_buckets(4.0) == [0.5, 1, 2, 3, 4.0]
    assert default_buckets(4.0)[-1] == 4.0
    assert default_buckets(None) == [0.5, 1, 2, 3, 5, 8, 10, 20, 50]
    assert default_buckets(0.3) == [0.3]


def test_write_frontier_csv_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pts = _random_points(rng, 40, coarse=False)
    pts += [
        Point(epsilon=math.inf, accuracy=0.99, run_id="np", trial="trial_0099", epoch=3, params={"noise": 0.0}),
        Point(epsilon=2.0, accuracy=0.1, run_id="x", trial="trial_0100", epoch=1, params={"epoch": "clash"}),
    ]
    front = pareto_front(pts)
    path = tmp_path / "sub" / "frontier.csv"
    confirmed = [
        ConfirmedConfig(
            trial="trial_0007",
            epoch=2,
            epsilon=1.5,
            search_val_accuracy=0.9,
            val_mean=0.85,
            val_std=0.01,
            test_mean=0.84,
            test_std=0.02,
            seeds=3,
            run_ids=("a", "b", "c"),
            params={"lr": 0.5},
            best_for=(2.0, 3.0),
            trained_on="train+validation",
        )
    ]
    write_frontier_csv(path, pts, front, confirmed)

    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = reader.fieldnames
    assert fields[:13] == [
        "kind",
        "epsilon",
        "val_accuracy",
        "val_accuracy_std",
        "test_accuracy_mean",
        "test_accuracy_std",
        "seeds",
        "trained_on",
        "best_for_epsilon",
        "on_frontier",
        "run_id",
        "trial",
        "epoch",
    ]
    # Sorted by param key; a key clashing with a fixed column is prefixed.
    assert fields[13:] == ["param_epoch", "lr", "noise"]
    # The confirmed configurations first; search points carry no test accuracy.
    confirmed_row, rows = rows[0], rows[1:]
    assert confirmed_row["kind"] == "confirmed" and confirmed_row["best_for_epsilon"] == "2 3"
    assert confirmed_row["trained_on"] == "train+validation"
    assert float(confirmed_row["test_accuracy_mean"]) == 0.84 and confirmed_row["run_id"] == "a b c"
    assert {r["kind"] for r in rows} == {"search"} and {r["test_accuracy_mean"] for r in rows} == {""}
    assert {r["trained_on"] for r in rows} == {""}
    assert len(rows) == len(pts)
    assert {r["on_frontier"] for r in rows} <= {"true", "false"}
    on = {(r["run_id"], int(r["epoch"])) for r in rows if r["on_frontier"] == "true"}
    assert on == {(p.run_id, p.epoch) for p in front}
    inf_row = next(r for r in rows if r["run_id"] == "np")
    assert inf_row["epsilon"] == "inf" and inf_row["on_frontier"] == "true" and inf_row["noise"] == "0.0"
    assert inf_row["lr"] == ""
    # Sorted by ε, then by accuracy descending; floats round-trip exactly.
    keys = [(float(r["epsilon"]), -float(r["val_accuracy"])) for r in rows]
    assert keys == sorted(keys)
    assert sorted(float(r["val_accuracy"]) for r in rows) == sorted(p.accuracy for p in pts)


def _check_png(path: Path) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100


@pytest.mark.parametrize("budget", [None, 3.0])
@pytest.mark.parametrize("with_inf", [False, True])
def test_plot_frontier_writes_png(tmp_path: Path, budget: float | None, with_inf: bool) -> None:
    pts = _random_points(np.random.default_rng(5), 60, coarse=False)
    if with_inf:
        pts += [_pt(math.inf, 0.97, 500), _pt(math.inf, 0.96, 501)]
    front = pareto_front(pts)
    path = tmp_path / "plots" / "frontier.png"
    plot_frontier(
        path,
        pts,
        front,
        budget=budget,
        delta=1e-5,
        accountant="rdp",
        title="test sweep",
        extra_lines={"sweep ε incl. tuning": 4.2},
    )
    _check_png(path)


def test_plot_frontier_degenerate_inputs(tmp_path: Path) -> None:
    only_inf = [_pt(math.inf, 0.9, 1)]
    plot_frontier(
        tmp_path / "a.png",
        only_inf,
        pareto_front(only_inf),
        budget=2.0,
        delta=1e-5,
        accountant="prv",
        title="non-private only",
    )
    _check_png(tmp_path / "a.png")
    plot_frontier(tmp_path / "b.png", [], [], budget=None, delta=1e-5, accountant="rdp", title="empty")
    _check_png(tmp_path / "b.png")


def test_format_frontier_table() -> None:
    pts = _random_points(np.random.default_rng(11), 50, coarse=False)
    front = pareto_front(pts)
    text = format_frontier_table(front, delta=1e-5, accountant="rdp", param_keys=["lr"])
    lines = text.splitlines()
    assert "RDP" in lines[0] and "1e-05" in lines[0]
    assert "lr" in lines[1] and "accuracy" in lines[1]
    body = lines[3:]
    assert len(body) == len(front)
    for line, p in zip(body, front):
        assert f"{p.epsilon:.3f}" in line and f"{p.accuracy:.4f}" in line and p.trial in line
    # Right-aligned numbers: every ε and accuracy cell ends in the same column.
    assert len({line.index(f"{p.accuracy:.4f}") for line, p in zip(body, front)}) == 1
    empty = format_frontier_table([], delta=1e-6, accountant="prv")
    assert "PRV" in empty and "1e-06" in empty


def test_the_confirmed_table_names_the_choice_the_defaults_and_a_calibrated_sigma() -> None:
    from sweeps.results.frontier_report import FrontierReport

    def confirmed(trial: str, bound: float, val: float, *, best: bool) -> ConfirmedConfig:
        return ConfirmedConfig(
            trial=trial,
            epoch=20,
            epsilon=bound - 0.01,
            bound=bound,
            search_val_accuracy=math.nan if trial == "defaults" else 0.95,
            val_mean=val,
            val_std=0.01,
            test_mean=val - 0.01,
            test_std=0.005,
            seeds=3,
            params={"target_epsilon": None, "noise_multiplier": 2.5, "lr": 2.0},
            best_for=(bound,) if best else (),
            trained_on="train+validation" if best else "train",
        )

    points = [
        Point(
            epsilon=2.9,
            accuracy=0.95,
            run_id="r",
            trial="trial_0001",
            epoch=20,
            params={"axis.target_epsilon": "3.0", "axis.lr": "2.0"},
        )
    ]
    report = FrontierReport(
        points,
        budget=3.0,
        delta=1e-5,
        accountant="prv",
        axis_keys=["target_epsilon", "lr"],
        confirmed=[confirmed("trial_0001", 3.0, 0.93, best=True), confirmed("defaults", 3.0, 0.92, best=False)],
    )
    text = report.summary()
    assert "refit" in text and "defaults val" in text
    (row,) = [line for line in text.splitlines() if "trial_0001, epoch 20" in line]
    # Its validation mean, its search point's, the defaults' beside it; σ in place of the spent target ε.
    assert "0.9300" in row and "0.9500" in row and "0.9200" in row
    assert "noise_multiplier=2.5, lr=2" in row and "None" not in row
    # Strict JSON (no NaN), and the bound's record is the refit choice.
    (best,) = [b for b in json.loads(json.dumps(report._best_records(), allow_nan=False)) if b["epsilon_at_most"] == 3]
    assert best["trained_on"] == "train+validation" and best["trial"] == "trial_0001"


def test_a_model_kwargs_axis_is_shown_and_recorded_from_the_confirmed_configuration() -> None:
    from sweeps.results.frontier_report import FrontierReport

    confirmed = ConfirmedConfig(
        trial="trial_0001",
        epoch=4,
        epsilon=2.9,
        bound=3.0,
        search_val_accuracy=0.9,
        val_mean=0.88,
        val_std=0.01,
        test_mean=0.87,
        test_std=0.01,
        seeds=2,
        params={"noise_multiplier": 1.5, "model": "mynet:build", "model_kwargs": {"width": 32, "depth": 2}},
        best_for=(3.0,),
        trained_on="train",
    )
    point = Point(
        epsilon=2.9,
        accuracy=0.9,
        run_id="r",
        trial="trial_0001",
        epoch=4,
        params={"axis.noise_multiplier": "1.5", "axis.model_kwargs.width": "32"},
    )
    report = FrontierReport(
        [point],
        budget=3.0,
        delta=1e-5,
        accountant="rdp",
        axis_keys=["noise_multiplier", "model_kwargs.width"],
        confirmed=[confirmed],
    )
    (row,) = [line for line in report.summary().splitlines() if "trial_0001, epoch 4" in line]
    assert "noise_multiplier=1.5, model_kwargs.width=32" in row
    (best,) = [b for b in report._best_records() if b["epsilon_at_most"] == 3.0]
    assert best["params"] == {"noise_multiplier": 1.5, "model_kwargs.width": 32}
    unconfirmed = FrontierReport(
        [point], budget=3.0, delta=1e-5, accountant="rdp", axis_keys=["noise_multiplier", "model_kwargs.width"]
    )
    (record,) = [b for b in unconfirmed._best_records() if b["epsilon_at_most"] == 3.0]
    assert record["params"] == {"axis.noise_multiplier": "1.5", "axis.model_kwargs.width": "32"}
