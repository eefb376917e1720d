"""The accuracy-vs-ε frontier of a sweep: Pareto set, ε buckets, CSV (the plot: sweeps.results.frontier_plot).

Pure data, run after the trials finish: nothing here imports Ray, Optuna, MLflow
or torch, so reports can be rebuilt from logged results on any machine.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_BUCKETS",
    "ConfirmedConfig",
    "Point",
    "best_per_bucket",
    "default_buckets",
    "format_frontier_table",
    "pareto_front",
    "write_frontier_csv",
]

DEFAULT_BUCKETS: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 20.0, 50.0)
_FIXED_COLUMNS = (
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
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Point:
    """One (ε, accuracy) measurement of the search: a trial's validation accuracy after ``epoch``, at privacy cost ε.

    ``epsilon`` is ``math.inf`` for non-private trials; ``params`` are the trial's hyperparameters.
    """

    epsilon: float
    accuracy: float
    run_id: str
    trial: str
    epoch: int
    delta: float | None = None  # with the accountant: what the ε is a statement of
    accountant: str | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfirmedConfig:
    """A configuration retrained with fresh seeds after the search: what a frontier reports.

    ``trial`` and ``epoch`` name the search point it came from, nominated for the ε bound
    ``bound``; ``params`` is the flat configuration that was retrained ``seeds`` times (that
    trial's hyperparameters for ``epoch`` epochs, σ calibrated to spend the bound, no seed), and
    ``epsilon`` what one such run spends. Validation accuracy chose it; the test accuracy (mean ±
    sample std over the seeds) is read only to be reported. ``best_for`` holds the ε bound whose
    best it was chosen as (or nothing).

    ``trained_on`` says what the runs behind the test figures trained on: ``"train"`` (the
    confirmation runs, validation held out) or ``"train+validation"`` for a chosen configuration
    refit after the choice (:func:`sweeps.results.confirm.refit`): then ``params``, ``epsilon``,
    ``seeds`` and the test figures are the refit runs', and ``val_mean``/``val_std`` stay what
    chose it.
    """

    trial: str
    epoch: int
    epsilon: float
    bound: float | None = None
    search_val_accuracy: float
    val_mean: float
    val_std: float
    test_mean: float
    test_std: float
    seeds: int
    run_ids: tuple[str, ...] = ()
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    best_for: tuple[float, ...] = ()
    trained_on: str = "train"

    @property
    def key(self) -> tuple[str, int, float | None]:
        """(trial, epoch, bound): the candidate it was confirmed as (sweeps.results.confirm.Candidate.key)."""
        return (self.trial, self.epoch, self.bound)


def _comparable(p: Point) -> bool:
    # A NaN (a diverged or failed trial) is neither better nor worse than anything, so it can
    # neither dominate nor be best; it is left out of the frontier and the buckets.
    return not (math.isnan(p.epsilon) or math.isnan(p.accuracy))


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The Pareto-optimal points for (minimise ε, maximise accuracy), sorted by ε ascending.

    p is dominated if some q has q.ε <= p.ε and q.acc >= p.acc, one of them strict. Of several
    points with identical (ε, acc) exactly one is kept: the first in input order. Along the
    result accuracy strictly increases. Points with NaN ε or accuracy are ignored. O(n log n).
    """
    # Stable sort by (ε asc, acc desc): within equal ε the best comes first, and among identical
    # (ε, acc) the earliest input stays first, so "strictly better than all so far" keeps it.
    ordered = sorted((p for p in points if _comparable(p)), key=lambda p: (p.epsilon, -p.accuracy))
    front: list[Point] = []
    for p in ordered:
        if not front or p.accuracy > front[-1].accuracy:
            front.append(p)
    return front


def best_per_bucket(points: Iterable[Point], buckets: Sequence[float]) -> list[tuple[float, Point | None]]:
    """For each ε bound b, the most accurate point with ε <= b (ties: lower ε, then first seen), or None."""
    pts = [p for p in points if _comparable(p)]
    result: list[tuple[float, Point | None]] = []
    for b in buckets:
        eligible = [(-p.accuracy, p.epsilon, i) for i, p in enumerate(pts) if p.epsilon <= b]
        result.append((b, pts[min(eligible)[2]] if eligible else None))
    return result


def default_buckets(budget: float | None) -> list[float]:
    """The standard ε bounds up to the budget, plus the budget itself; all of them without a budget."""
    if budget is None or not math.isfinite(budget):
        return list(DEFAULT_BUCKETS)
    cut = [b for b in DEFAULT_BUCKETS if b <= budget]
    return cut if budget in cut else [*cut, float(budget)]


def _row_order(p: Point) -> tuple[bool, float, bool, float]:
    # NaNs last; they would otherwise break the total order and scramble the rows around them.
    return (math.isnan(p.epsilon), p.epsilon, math.isnan(p.accuracy), -p.accuracy)


def _identity(p: Point) -> tuple[str, str, int, float, float]:
    # Params are a dict (unhashable), and the front may come back as copies, so match on fields.
    return (p.run_id, p.trial, p.epoch, p.epsilon, p.accuracy)


def write_frontier_csv(
    path: str | os.PathLike[str],
    points: Iterable[Point],
    front: Iterable[Point],
    confirmed: Sequence[ConfirmedConfig] = (),
) -> None:
    """The confirmed configurations, then one row per search point sorted by ε then -accuracy.

    Columns: kind (confirmed / search), epsilon, val_accuracy (confirmed: the mean over its seeds),
    val_accuracy_std, test_accuracy_mean, test_accuracy_std, seeds, trained_on and best_for_epsilon
    (confirmed rows only: search points carry no test accuracy), on_frontier (true/false), run_id, trial,
    epoch, then one per param key (union over rows, sorted; a key clashing with a fixed column
    gets a "param_" prefix). ε = ∞ is written as "inf".
    """
    pts = sorted(points, key=_row_order)
    on_front = {_identity(p) for p in front}
    keys = sorted({k for p in pts for k in p.params} | {k for c in confirmed for k in c.params})
    columns = {k: f"param_{k}" if k in _FIXED_COLUMNS else k for k in keys}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*_FIXED_COLUMNS, *columns.values()])
        for c in sorted(confirmed, key=lambda c: (c.epsilon, -c.val_mean)):
            # repr round-trips floats exactly and spells infinity "inf", which float() reads back.
            row = [
                "confirmed",
                repr(float(c.epsilon)),
                repr(c.val_mean),
                repr(c.val_std),
                repr(c.test_mean),
                repr(c.test_std),
                c.seeds,
                c.trained_on,
                " ".join(f"{b:g}" for b in c.best_for),
                "",
                " ".join(c.run_ids),
                c.trial,
                c.epoch,
            ]
            writer.writerow(row + [c.params.get(k, "") for k in keys])
        for p in pts:
            flag = "true" if _identity(p) in on_front else "false"
            row = [
                "search",
                repr(float(p.epsilon)),
                repr(float(p.accuracy)),
                "",
                "",
                "",
                "",
                "",
                "",
                flag,
                p.run_id,
                p.trial,
                p.epoch,
            ]
            writer.writerow(row + [p.params.get(k, "") for k in keys])


def _fmt_param(value: Any) -> str:
    # MLflow hands params back as strings; show long floats (Optuna's samples) to 4 digits.
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return value if len(value) <= 8 else f"{number:.4g}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_frontier_table(
    front: Sequence[Point], *, delta: float, accountant: str, param_keys: Sequence[str] = ()
) -> str:
    """A plain-text table of the frontier: ε (3 decimals), accuracy (4), trial, epoch, then params."""
    header = f"Accuracy-vs-ε frontier (δ = {delta:g}, {accountant.upper()} accountant): {len(front)} point(s)"
    names = ["ε", "accuracy", "trial", "epoch", *param_keys]
    rows = [
        [f"{p.epsilon:.3f}", f"{p.accuracy:.4f}", p.trial, str(p.epoch)]
        + [_fmt_param(p.params.get(k, "")) for k in param_keys]
        for p in front
    ]
    # Numbers right-aligned so decimals line up; names (trial, string params) left-aligned.
    numeric = [i != 2 and all(_is_number(r[i]) or not r[i] for r in rows) for i in range(len(names))]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [header, line(names), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
