"""``frontier.png``: a sweep's accuracy-vs-ε points, its Pareto frontier and confirmed results.

The ε axis covers what the trials spent, up to the budget. Sweep-level ε values (naive
composition of every trial, Papernot–Steinke's bound for private selection) are often a hundred
times larger: they are written in the legend, not drawn as lines that would stretch the axis
and squeeze the frontier into its left edge. Ten thousand points stay readable: small
translucent dots, rasterised so the file stays small. The ε axis is logarithmic by default: a
frontier climbs steeply at small ε (0.1 to 1 holds half of it in a typical sweep), which a linear
axis squeezes against its left edge.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sweeps.results.frontier import ConfirmedConfig, Point

__all__ = ["epsilon_axis_label", "plain_log_ticks", "plot_frontier"]

# Dots shrink and fade as points grow in number, so that dense regions read as density.
_DOT_SIZE = ((300, 14.0, 0.4), (3000, 7.0, 0.25), (math.inf, 4.0, 0.18))  # (up to n points, size, alpha)
# Legend order: what was measured, then the ε values to read it by; the sweep ε last.
REFIT_COLOUR = "#0b2e59"  # the refit choices' stars: a dark blue, of the confirmed diamonds' family
_LEGEND_ORDER = ("search", "Pareto", "confirmed", "chosen", "ε budget")


def _legend_rank(label: str) -> int:
    return next((i for i, prefix in enumerate(_LEGEND_ORDER) if label.startswith(prefix)), len(_LEGEND_ORDER))


def epsilon_axis_label(delta: float, accountant: str) -> str:
    """The ε axis' name: every ε on it is a statement of this δ and accountant."""
    return f"ε (δ = {delta:g}, {accountant.upper()} accountant)"


def _dot_style(n: int) -> tuple[float, float]:
    return next((size, alpha) for limit, size, alpha in _DOT_SIZE if n <= limit)


def _finite(p: Point) -> bool:
    return math.isfinite(p.epsilon) and not math.isnan(p.accuracy)


def _x_limits(epsilons: Sequence[float], budget: float | None, *, log: bool) -> tuple[float, float]:
    """From the smallest to the largest ε spent (the budget included): nothing sweep-level."""
    top = max([*epsilons, *([budget] if budget is not None and math.isfinite(budget) else [])], default=1.0)
    if log:
        positive = [e for e in epsilons if e > 0]
        bottom = min(positive, default=top / 100)
        return bottom / 1.15, top * 1.15
    return 0.0, top * 1.04


def _confirmed_label(confirmed: Sequence[ConfirmedConfig], *, refit: bool = False) -> str:
    seeds = sorted({c.seeds for c in confirmed})
    count = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    what = "chosen per ε bound, refit on train + validation" if refit else "confirmed"
    return f"{what}: test accuracy, mean ± std over {count} fresh seeds ({len(confirmed)})"


def _sweep_entries(ax: Any, values: Mapping[str, float], *, delta: float, xmax: float) -> None:
    """The sweep-level ε values as legend entries without a mark (they are not on the axis)."""
    for name, value in values.items():
        label = name if name.startswith("sweep ε") else f"sweep ε, {name}"
        where = ", off the axis" if value > xmax else ""
        ax.plot([], [], " ", label=f"{label} = {value:.4g} (δ = {delta:g}){where}")


def plain_log_ticks(ax: Any) -> None:
    """1, 2, 5 per decade, written as plain numbers (0.5, 2, 8) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_frontier(
    path: str | os.PathLike[str],
    points: Iterable[Point],
    front: Iterable[Point],
    *,
    budget: float | None,
    delta: float,
    accountant: str,
    title: str,
    extra_lines: Mapping[str, float] | None = None,
    confirmed: Sequence[ConfirmedConfig] = (),
    log_epsilon: bool = True,
    search_metric: str = "validation accuracy",
) -> Any:
    """Save a PNG of every finite-ε point (dots), the frontier (a step line) and ``confirmed``.

    Args:
        path: the PNG to write (its folder must exist).
        points: the search's points; those with ε = ∞ (no noise) are counted in the title, not drawn.
        front: the Pareto frontier among them (:func:`sweeps.results.frontier.pareto_front`).
        budget: the sweep's ε budget, drawn as a vertical line (None: no budget).
        delta: the δ every ε is a statement of, written on the ε axis.
        accountant: the accountant that computed every ε (``"prv"``, ``"rdp"``), written on the ε axis.
        title: the plot's title.
        extra_lines: sweep-level ε values by label, written in the legend (they do not set the axis).
        confirmed: frontier configurations retrained with fresh seeds, drawn at their test accuracy
            mean with ± std error bars.
        log_epsilon: a logarithmic ε axis (the default) or a linear one from 0.
        search_metric: what the points' accuracy is (the y label).

    Returns:
        The figure's matplotlib axes. The figure is closed; its limits and labels can still be read.

    Raises:
        OSError: ``path`` cannot be written.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from sweeps.results.frontier import Point, pareto_front
        >>> points = [Point(epsilon=e, accuracy=a, run_id=f"r{i}", trial=f"t{i}", epoch=3)
        ...           for i, (e, a) in enumerate([(0.5, 0.71), (1.0, 0.83), (2.0, 0.80), (4.0, 0.90)])]
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     png = Path(folder) / "frontier.png"
        ...     ax = plot_frontier(png, points, pareto_front(points), budget=8.0, delta=1e-5,
        ...                        accountant="prv", title="digits")
        ...     png.stat().st_size > 0
        True
        >>> ax.get_xlabel()
        'ε (δ = 1e-05, PRV accountant), log scale'
    """
    import matplotlib

    matplotlib.use("Agg")  # here, not at import: importing this module must not pick a backend
    import matplotlib.pyplot as plt

    pts = [p for p in points if not (math.isnan(p.epsilon) or math.isnan(p.accuracy))]
    finite = [p for p in pts if _finite(p)]
    n_hidden = len(pts) - len(finite)
    fr = [p for p in front if _finite(p)]
    shown_confirmed = [c for c in confirmed if math.isfinite(c.epsilon) and not math.isnan(c.test_mean)]

    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    try:
        epsilons = [p.epsilon for p in finite] + [c.epsilon for c in shown_confirmed]
        low, high = _x_limits(epsilons, budget, log=log_epsilon)
        if log_epsilon:
            ax.set_xscale("log")
            plain_log_ticks(ax)
        if finite:
            size, alpha = _dot_style(len(finite))
            ax.scatter(
                [p.epsilon for p in finite],
                [p.accuracy for p in finite],
                s=size,
                c="0.35",
                alpha=alpha,
                linewidths=0,
                rasterized=True,
                label=f"search: {search_metric}, every trial × epoch ({len(finite):,})",
            )
        if fr:
            xs, ys = [p.epsilon for p in fr], [p.accuracy for p in fr]
            # Carry the last step to the largest ε seen: past it nothing more accurate was found.
            x_end = max([p.epsilon for p in finite] + xs)
            ax.step(xs + [x_end], ys + [ys[-1]], where="post", color="tab:red", lw=1.8, zorder=3)
            ax.plot(
                xs,
                ys,
                "o",
                color="tab:red",
                ms=4 if len(fr) > 25 else 6,
                zorder=4,
                label=f"Pareto frontier of the search ({len(fr)})",
            )
        # A chosen configuration refit on train + validation (sweeps.results.confirm.refit) is a
        # different model from its confirmation runs: drawn apart, a dark star edged in white, so it
        # stands out of the diamonds it sits among and the two are not compared.
        for refit, marker, size, colour in ((False, "D", 6, "tab:blue"), (True, "*", 15, REFIT_COLOUR)):
            drawn = [c for c in shown_confirmed if (c.trained_on != "train") == refit]
            if drawn:
                ax.errorbar(
                    [c.epsilon for c in drawn],
                    [c.test_mean for c in drawn],
                    yerr=[c.test_std if math.isfinite(c.test_std) else 0.0 for c in drawn],
                    fmt=marker,
                    color=colour,
                    ms=size,
                    mec="white" if refit else colour,
                    mew=0.8,
                    capsize=4,
                    elinewidth=1.5,
                    zorder=5 + refit,
                    label=_confirmed_label(drawn, refit=refit),
                )
        if budget is not None and math.isfinite(budget):
            ax.axvline(budget, color="black", ls="--", lw=1.2, label=f"ε budget = {budget:g}")
        if n_hidden:
            # An empty handle puts the note in the legend, next to the counts it qualifies.
            ax.plot([], [], " ", label=f"{n_hidden:,} non-private points not shown")
        if extra_lines:
            _sweep_entries(ax, extra_lines, delta=delta, xmax=high)
        if not finite and not shown_confirmed:
            ax.text(0.5, 0.5, "no finite-ε points", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(low, high)
        spread = [c.test_std if math.isfinite(c.test_std) else 0.0 for c in shown_confirmed]
        lows = [p.accuracy for p in finite] + [c.test_mean - s for c, s in zip(shown_confirmed, spread)]
        highs = [p.accuracy for p in finite] + [c.test_mean + s for c, s in zip(shown_confirmed, spread)]
        if lows:
            ax.set_ylim(max(0.0, min(lows) - 0.02), min(1.005, max(highs) + 0.02))
        ax.set_xlabel(epsilon_axis_label(delta, accountant) + (", log scale" if log_epsilon else ""))
        ax.set_ylabel("accuracy")
        ax.set_title(title)
        ax.grid(True, alpha=0.3, which="both" if log_epsilon else "major")
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            # What was measured first (search, frontier, confirmed), then the ε values to read them by.
            order = sorted(range(len(labels)), key=lambda i: _legend_rank(labels[i]))
            ax.legend(
                [handles[i] for i in order],
                [labels[i] for i in order],
                loc="lower right",
                fontsize="small",
                framealpha=0.9,
                markerscale=1.5,
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, format="png")
    finally:
        plt.close(fig)  # figures held by pyplot otherwise accumulate over a long-lived sweep
    return ax
