"""Several sweeps' confirmed frontiers side by side: one accuracy-vs-ε plot and one CSV.

A sweep's confirmed frontier is, per reported ε bound, the chosen configuration's test accuracy
as mean ± std over its fresh seeds (the confirmation stage, :mod:`sweeps.results.confirm`), which
its parent run holds as metrics (``confirmed_test_accuracy_mean.eps_le_<bound>`` and its ``_std``
and ``confirmed_epsilon`` siblings). Two frontiers compare only where their ε say the same thing:
the same δ and the same accountant; :func:`check_comparable` refuses others.

Pure: reading the runs from MLflow is :mod:`sweeps.tracking.sweep_runs`'s, the command
``python -m sweeps.compare``'s.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dp_core.config import ConfigError
from sweeps.results.frontier_plot import epsilon_axis_label, plain_log_ticks

__all__ = ["BoundResult", "CSV_COLUMNS", "SweepFrontier", "check_comparable", "plot_frontiers", "write_frontiers_csv"]

_MEAN = "confirmed_test_accuracy_mean.eps_le_"
_STD = "confirmed_test_accuracy_std.eps_le_"
_EPSILON = "confirmed_epsilon.eps_le_"
#: One colour per sweep, in order (matplotlib's tab10: told apart also in greyscale by marker).
_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*")

#: The CSV's columns: one row per sweep and ε bound.
CSV_COLUMNS = (
    "sweep",
    "run_id",
    "space",
    "bound",
    "epsilon",
    "test_accuracy_mean",
    "test_accuracy_std",
    "delta",
    "accountant",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BoundResult:
    """One ε bound of a confirmed frontier: the chosen configuration's ε and test accuracy (mean ±
    std over its seeds; std NaN with one seed)."""

    bound: float
    epsilon: float
    test_mean: float
    test_std: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepFrontier:
    """A sweep's confirmed frontier, as its parent run holds it."""

    name: str
    run_id: str
    space: str
    delta: float
    accountant: str
    results: tuple[BoundResult, ...]

    @classmethod
    def from_run(
        cls, *, name: str, run_id: str, params: Mapping[str, str], metrics: Mapping[str, float]
    ) -> SweepFrontier:
        """The frontier from a sweep's parent run: its params (``delta``, ``accountant``, ``space``)
        and metrics. Raises ConfigError when the run has no confirmed bound (``confirm: off``, or
        a sweep that has not finished)."""
        results = []
        for key, mean in metrics.items():
            if not key.startswith(_MEAN):
                continue
            bound = key[len(_MEAN) :]
            results.append(
                BoundResult(
                    bound=float(bound),
                    epsilon=float(metrics.get(_EPSILON + bound, float(bound))),
                    test_mean=float(mean),
                    test_std=float(metrics.get(_STD + bound, math.nan)),
                )
            )
        if not results:
            raise ConfigError(
                f"Expected a sweep with a confirmed frontier, but got sweep {name} (run {run_id}) without one: "
                "its space has confirm: off, or it has not finished (confirmed_test_accuracy_mean.* metrics "
                "are logged on the parent run at its end)."
            )
        missing = [k for k in ("delta", "accountant") if k not in params]
        if missing:
            raise ConfigError(
                f"Expected a sweep's parent run with params delta and accountant, but got run {run_id} ({name}) "
                f"without {' and '.join(missing)}: is it a dpsweep sweep's parent run?"
            )
        return cls(
            name=name,
            run_id=run_id,
            space=params.get("space", ""),
            delta=float(params["delta"]),
            accountant=str(params["accountant"]).lower(),
            results=tuple(sorted(results, key=lambda r: r.bound)),
        )

    def describe(self) -> str:
        return f"{self.name} (δ = {self.delta:g}, {self.accountant.upper()} accountant)"


def check_comparable(frontiers: Sequence[SweepFrontier]) -> None:
    """Raise ConfigError unless every frontier's ε is a statement of the same δ and accountant.

    Example:
        >>> a = SweepFrontier(name="a", run_id="1", space="s", delta=1e-5, accountant="prv", results=())
        >>> check_comparable([a, dataclasses.replace(a, name="b", accountant="rdp")])
        Traceback (most recent call last):
        ...
        dp_core.errors.ConfigError: Expected sweeps whose ε share one δ and one accountant, ...
    """
    kinds = {(f.delta, f.accountant) for f in frontiers}
    if len(kinds) > 1:
        raise ConfigError(
            "Expected sweeps whose ε share one δ and one accountant, but got "
            + ", ".join(f.describe() for f in frontiers)
            + ": their ε bounds are different statements, and one plot would compare them as if not. "
            "Compare sweeps run with the same delta and accountant."
        )


def plot_frontiers(path: str | os.PathLike[str], frontiers: Sequence[SweepFrontier], *, title: str = "") -> Any:
    """Save a PNG of each frontier's test accuracy (mean ± std error bars, a line through its
    bounds) against ε, one colour per sweep, on one logarithmic ε axis named by δ and accountant.

    Args:
        path: the PNG to write (its folder is made).
        frontiers: comparable frontiers (:func:`check_comparable`), drawn in order.
        title: the plot's title (default: the sweeps' names).

    Returns:
        The figure's matplotlib axes (the figure is closed; limits and labels can be read).
    """
    import matplotlib

    matplotlib.use("Agg")  # here, not at import: importing this module must not pick a backend
    import matplotlib.pyplot as plt

    check_comparable(frontiers)
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    try:
        ax.set_xscale("log")
        plain_log_ticks(ax)
        lows, highs, epsilons = [], [], []
        for k, frontier in enumerate(frontiers):
            shown = [r for r in frontier.results if math.isfinite(r.epsilon) and math.isfinite(r.test_mean)]
            if not shown:
                continue
            spread = [r.test_std if math.isfinite(r.test_std) else 0.0 for r in shown]
            ax.errorbar(
                [r.epsilon for r in shown],
                [r.test_mean for r in shown],
                yerr=spread,
                fmt="-" + _MARKERS[k % len(_MARKERS)],
                color=_COLOURS[k % len(_COLOURS)],
                ms=6,
                lw=1.4,
                capsize=4,
                elinewidth=1.4,
                label=f"{frontier.name}: test accuracy, mean ± std ({len(shown)} bounds)",
            )
            epsilons += [r.epsilon for r in shown]
            lows += [r.test_mean - s for r, s in zip(shown, spread)]
            highs += [r.test_mean + s for r, s in zip(shown, spread)]
        if epsilons:
            ax.set_xlim(min(epsilons) / 1.3, max(epsilons) * 1.3)
            ax.set_ylim(max(0.0, min(lows) - 0.02), min(1.005, max(highs) + 0.02))
            ax.legend(loc="best", fontsize="small", framealpha=0.9)
        else:
            ax.text(0.5, 0.5, "no confirmed bound with a finite ε", ha="center", va="center", transform=ax.transAxes)
        first = frontiers[0]
        ax.set_xlabel(epsilon_axis_label(first.delta, first.accountant) + ", log scale")
        ax.set_ylabel("test accuracy (confirmed: mean ± std over fresh seeds)")
        ax.set_title(title or "confirmed frontiers: " + " vs ".join(f.name for f in frontiers))
        ax.grid(True, alpha=0.3, which="both")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, format="png")
    finally:
        plt.close(fig)
    return ax


def write_frontiers_csv(path: str | os.PathLike[str], frontiers: Sequence[SweepFrontier]) -> Path:
    """Write one row per sweep and ε bound (:data:`CSV_COLUMNS`); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for frontier in frontiers:
            for result in frontier.results:
                writer.writerow(
                    [
                        frontier.name,
                        frontier.run_id,
                        frontier.space,
                        f"{result.bound:g}",
                        repr(result.epsilon),
                        repr(result.test_mean),
                        repr(result.test_std),
                        f"{frontier.delta:g}",
                        frontier.accountant,
                    ]
                )
    return path
