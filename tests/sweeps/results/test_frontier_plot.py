"""frontier.png: the axis spans the trials' ε, sweep ε values are labels, 10,000 points stay readable."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sweeps.results.frontier import ConfirmedConfig, Point, best_per_bucket, pareto_front
from sweeps.results.frontier_plot import plot_frontier

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TAB_RED = np.array([214, 39, 40]) / 255  # the frontier's colour
TAB_BLUE = np.array([31, 119, 180]) / 255  # the confirmed results' colour


def _points(n: int, *, seed: int = 0, top: float = 8.0) -> list[Point]:
    """A sweep-like cloud: accuracy rises with log ε and saturates, with noise below the curve."""
    rng = np.random.default_rng(seed)
    eps = np.exp(rng.uniform(math.log(0.1), math.log(top), n))
    acc = np.clip(0.97 - 0.6 * np.exp(-2.5 * eps) - rng.exponential(0.06, n), 0.05, 1.0)
    return [
        Point(epsilon=float(e), accuracy=float(a), run_id=f"r{i // 10}", trial=f"trial_{i // 10:04d}", epoch=i % 10 + 1)
        for i, (e, a) in enumerate(zip(eps, acc))
    ]


def _confirmed(points: list[Point], *, seeds: int = 5) -> list[ConfirmedConfig]:
    best = [p for _, p in best_per_bucket(points, [0.5, 1.0, 2.0, 5.0, 8.0]) if p is not None]
    return [
        ConfirmedConfig(
            trial=p.trial,
            epoch=p.epoch,
            epsilon=p.epsilon,
            search_val_accuracy=p.accuracy,
            val_mean=p.accuracy - 0.005,
            val_std=0.01,
            test_mean=p.accuracy - 0.01,
            test_std=0.02,
            seeds=seeds,
            best_for=(bound,),
        )
        for bound, p in zip([0.5, 1.0, 2.0, 5.0, 8.0], best)
    ]


def _image(path: Path) -> np.ndarray:
    import matplotlib.image

    assert path.read_bytes().startswith(PNG_MAGIC)
    return matplotlib.image.imread(path)[..., :3]


def _columns_of(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Which pixel columns hold the colour (within a small tolerance)."""
    return np.nonzero(np.any(np.all(np.abs(image - colour) < 0.06, axis=2), axis=0))[0]


def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


@pytest.mark.parametrize("log_epsilon", [True, False])
def test_a_huge_sweep_epsilon_is_a_label_and_does_not_stretch_the_axis(tmp_path: Path, log_epsilon: bool) -> None:
    pts = _points(400)
    path = tmp_path / "frontier.png"
    ax = plot_frontier(
        path,
        pts,
        pareto_front(pts),
        budget=8.0,
        delta=1e-5,
        accountant="prv",
        title="t",
        extra_lines={"naive composition of the trials (RDP)": 620.0, "sweep ε (best of K random trials, RDP)": 5.5},
        log_epsilon=log_epsilon,
    )
    low, high = ax.get_xlim()
    assert max(p.epsilon for p in pts) < 8.0 <= high <= 8.0 * 1.2  # the budget in view, 620 nowhere near
    assert bool(low == 0.0) is not log_epsilon and ax.get_xscale() == ("log" if log_epsilon else "linear")
    texts = _legend_texts(ax)
    assert "sweep ε, naive composition of the trials (RDP) = 620 (δ = 1e-05), off the axis" in texts
    assert "sweep ε (best of K random trials, RDP) = 5.5 (δ = 1e-05)" in texts
    assert any(t.startswith("search: validation accuracy") for t in texts)
    # No vertical line but the budget's: the sweep ε values are text only.
    vertical = [line for line in ax.get_lines() if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2]
    assert [line.get_xdata()[0] for line in vertical] == [8.0]
    # The frontier is drawn across the plot, not squeezed into a sliver at its left edge.
    image = _image(path)
    red = _columns_of(image, TAB_RED)
    assert red.max() - red.min() > 0.6 * image.shape[1]


def test_ten_thousand_points_render_small_and_keep_the_frontier_visible(tmp_path: Path) -> None:
    pts = _points(10_000, seed=3)
    front = pareto_front(pts)
    path = tmp_path / "frontier.png"
    ax = plot_frontier(
        path,
        pts,
        front,
        budget=8.0,
        delta=1e-5,
        accountant="prv",
        title="10k",
        extra_lines={"naive composition of the trials (RDP)": 723.5},
    )
    image = _image(path)
    assert image.shape[:2] == (660, 1080)  # 9 x 5.5 inches at 120 dpi
    assert path.stat().st_size < 400_000  # rasterised dots: not 10,000 vector paths
    assert "search: validation accuracy, every trial × epoch (10,000)" in _legend_texts(ax)
    scatter = ax.collections[0]
    assert scatter.get_rasterized() and len(scatter.get_offsets()) == 10_000
    # The frontier's points are drawn on top and stay visible in the crowd.
    assert len(_columns_of(image, TAB_RED)) > 200
    # The grey cloud does not paint the plot black: most of the axes area stays light.
    assert image.mean() > 0.8


def test_confirmed_configurations_are_drawn_with_error_bars(tmp_path: Path) -> None:
    pts = _points(2000, seed=1)
    confirmed = _confirmed(pts, seeds=5)
    path = tmp_path / "frontier.png"
    ax = plot_frontier(
        path, pts, pareto_front(pts), budget=8.0, delta=1e-5, accountant="prv", title="c", confirmed=confirmed
    )
    texts = _legend_texts(ax)
    assert f"confirmed: test accuracy, mean ± std over 5 fresh seeds ({len(confirmed)})" in texts
    assert texts.index(f"confirmed: test accuracy, mean ± std over 5 fresh seeds ({len(confirmed)})") == 2
    bars = [c for c in ax.containers if c.has_yerr]
    assert len(bars) == 1
    segments = bars[0].lines[2][0].get_segments()  # one vertical bar per configuration
    assert len(segments) == len(confirmed)
    for segment, c in zip(segments, confirmed):
        (x0, y0), (x1, y1) = segment
        assert x0 == x1 == pytest.approx(c.epsilon)
        assert (y0, y1) == (pytest.approx(c.test_mean - c.test_std), pytest.approx(c.test_mean + c.test_std))
    low, high = ax.get_ylim()
    assert low <= min(c.test_mean - c.test_std for c in confirmed) and high >= max(
        c.test_mean + c.test_std for c in confirmed
    )
    assert len(_columns_of(_image(path), TAB_BLUE)) > 0


def test_refit_configurations_are_drawn_apart_as_the_chosen_ones(tmp_path: Path) -> None:
    import dataclasses

    pts = _points(500, seed=4)
    confirmed = _confirmed(pts, seeds=4)
    refit = [
        dataclasses.replace(c, trained_on="train+validation", test_mean=c.test_mean + 0.005) for c in confirmed[:3]
    ]
    ax = plot_frontier(
        tmp_path / "f.png",
        pts,
        pareto_front(pts),
        budget=8.0,
        delta=1e-5,
        accountant="prv",
        title="r",
        confirmed=refit + confirmed[3:],
    )
    texts = _legend_texts(ax)
    assert texts[2:4] == [
        "confirmed: test accuracy, mean ± std over 4 fresh seeds (2)",
        "chosen per ε bound, refit on train + validation: test accuracy, mean ± std over 4 fresh seeds (3)",
    ]
    bars = [c for c in ax.containers if c.has_yerr]
    assert [len(b.lines[2][0].get_segments()) for b in bars] == [2, 3]
    assert bars[1].lines[0].get_marker() == "*"
    assert [y for (_, y) in bars[1].lines[0].get_xydata()] == pytest.approx([c.test_mean for c in refit])


def test_seed_counts_that_differ_are_shown_as_a_range(tmp_path: Path) -> None:
    pts = _points(100, seed=2)
    confirmed = _confirmed(pts, seeds=3)[:2] + _confirmed(pts, seeds=5)[2:]
    ax = plot_frontier(
        tmp_path / "f.png",
        pts,
        pareto_front(pts),
        budget=None,
        delta=1e-5,
        accountant="rdp",
        title="r",
        confirmed=confirmed,
        search_metric="test accuracy",
    )
    texts = _legend_texts(ax)
    assert any("mean ± std over 3–5 fresh seeds" in t for t in texts)
    assert any(t.startswith("search: test accuracy") for t in texts)


def test_non_private_points_are_counted_not_plotted(tmp_path: Path) -> None:
    pts = _points(50) + [Point(epsilon=math.inf, accuracy=0.99, run_id="np", trial="np", epoch=1)]
    ax = plot_frontier(tmp_path / "f.png", pts, pareto_front(pts), budget=8.0, delta=1e-5, accountant="prv", title="np")
    assert "1 non-private points not shown" in _legend_texts(ax)
    assert ax.get_ylim()[1] <= 1.005
