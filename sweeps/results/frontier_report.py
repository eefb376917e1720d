"""The end of a sweep: frontier files and the console summary (no MLflow, no Ray here).

The search's points carry validation accuracy only, which chose what was confirmed; what the
report claims for each ε bound is the confirmed configuration's test accuracy, mean ± std over
its fresh seeds (:mod:`sweeps.results.confirm`). Without a confirmation stage (``confirm: off``, a
federated sweep) the report says that its figures are single-run validation accuracies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dp_core.config import model_kwarg_name
from sweeps.results.confirm import BASELINE
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

__all__ = ["FrontierReport"]


class FrontierReport:
    """The search's frontier, each ε bound's best, and the files showing them."""

    def __init__(
        self,
        points: Sequence[Point],
        *,
        budget: float | None,
        delta: float,
        accountant: str,
        axis_keys: Sequence[str],
        confirmed: Sequence[ConfirmedConfig] = (),
    ) -> None:
        self.points = list(points)
        self.front = pareto_front(self.points)
        self.bounds = default_buckets(budget)
        self.buckets = best_per_bucket(self.points, self.bounds)
        self.confirmed = list(confirmed)
        self.budget = budget
        self.delta = delta
        self.accountant = accountant
        self.axis_keys = list(axis_keys)

    def confirmed_best(self) -> list[tuple[float, ConfirmedConfig | None]]:
        """For each ε bound, the confirmed configuration chosen for it (None: nothing confirmed within it)."""
        return [(bound, next((c for c in self.confirmed if bound in c.best_for), None)) for bound in self.bounds]

    def write(self, folder: Path, *, title: str, extra_lines: Mapping[str, float] | None = None) -> list[Path]:
        """frontier.csv, frontier.png and best_per_epsilon.json in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        csv_path, png_path, best_path = (
            folder / "frontier.csv",
            folder / "frontier.png",
            folder / "best_per_epsilon.json",
        )
        write_frontier_csv(csv_path, self.points, self.front, self.confirmed)
        plot_frontier(
            png_path,
            self.points,
            self.front,
            budget=self.budget,
            delta=self.delta,
            accountant=self.accountant,
            extra_lines=extra_lines,
            confirmed=self.confirmed,
            title=f"{title}: accuracy vs ε ({len(self.points)} search points, {len(self.front)} on the "
            f"frontier{f', {len(self.confirmed)} confirmed' if self.confirmed else ''})",
        )
        best_path.write_text(json.dumps(self._best_records(), indent=2))
        return [csv_path, png_path, best_path]

    def _best_records(self) -> list[dict[str, Any]]:
        common = {"delta": self.delta, "accountant": self.accountant}
        if self.confirmed:
            return [
                {
                    "epsilon_at_most": bound,
                    "confirmed": True,
                    "epsilon": c.epsilon,
                    **common,
                    "test_accuracy_mean": c.test_mean,
                    "test_accuracy_std": _json_float(c.test_std),
                    "seeds": c.seeds,
                    "trained_on": c.trained_on,
                    "val_accuracy_mean": c.val_mean,
                    "val_accuracy_std": _json_float(c.val_std),
                    "search_val_accuracy": _json_float(c.search_val_accuracy),
                    "trial": c.trial,
                    "epoch": c.epoch,
                    "run_ids": list(c.run_ids),
                    "params": {k: _value(c.params, k) for k in self._param_keys(c.params)},
                    # What to retrain (python -m dp_core.train takes these keys): σ calibrated, no seed.
                    "train_config": dict(c.params),
                }
                if c is not None
                else {"epsilon_at_most": bound, "confirmed": True, "test_accuracy_mean": None}
                for bound, c in self.confirmed_best()
            ]
        return [
            {
                "epsilon_at_most": bound,
                "confirmed": False,
                "val_accuracy": p.accuracy,
                "epsilon": p.epsilon,
                **common,
                "run_id": p.run_id,
                "trial": p.trial,
                "epoch": p.epoch,
                "params": {k: _value(p.params, k) for k in self._param_keys(p.params)},
            }
            if p is not None
            else {"epsilon_at_most": bound, "confirmed": False, "val_accuracy": None}
            for bound, p in self.buckets
        ]

    def _param_keys(self, params: Mapping[str, Any]) -> list[str]:
        # Search points name their axes "axis.<key>" (MLflow params); confirmations log flat keys,
        # where a model_kwargs.NAME axis is NAME of the model_kwargs mapping.
        keys = []
        for key in self.axis_keys:
            if key not in params and f"axis.{key}" in params:
                keys.append(f"axis.{key}")
            elif key in params or _value(params, key) is not None:
                keys.append(key)
        return keys

    def best(self) -> Point | None:
        """The search point of highest validation accuracy at finite ε."""
        return max((p for p in self.points if math.isfinite(p.epsilon)), key=lambda p: p.accuracy, default=None)

    def summary(self) -> str:
        tag = f"δ = {self.delta:g}, {self.accountant.upper()}"
        if not self.confirmed:
            lines = [
                format_frontier_table(
                    self.front, delta=self.delta, accountant=self.accountant, param_keys=self.axis_keys
                ),
                "",
                "Not confirmed: each figure is one run's validation accuracy, the best of many, so optimistic.",
            ]
            for bound, p in self.buckets:
                text = (
                    f"val acc {p.accuracy:.4f} at ε = {p.epsilon:.3f} ({p.trial}, epoch {p.epoch})" if p else "no trial"
                )
                lines.append(f"  best with ε ≤ {bound:<5g} ({tag}): {text}")
            return "\n".join(lines)
        seeds = "/".join(map(str, sorted({c.seeds for c in self.confirmed})))
        refit = any(c.trained_on != "train" for _, c in self.confirmed_best() if c is not None)
        reported = (
            f"then trained {seeds} more times on train + validation (refit), test accuracy reported as mean ± "
            "std over the refit runs"
            if refit
            else "test accuracy reported as mean ± std over those runs"
        )
        lines = [
            f"Frontier, confirmed: each ε bound's configuration chosen on validation accuracy (mean over "
            f"{seeds} fresh seeds), {reported} ({tag}):"
        ]
        # The trainer's defaults, confirmed beside the nominees: what not tuning validated at each bound.
        defaults = {c.bound: c.val_mean for c in self.confirmed if c.trial == BASELINE}
        header = (
            f"  {'ε ≤':>5}  {'ε':>6}  {'test acc':>15}  {'val acc':>7}  {'search val':>10}"
            + (f"  {'defaults val':>12}" if defaults else "")
            + "  trial, epoch"
        )
        lines += [header, "  " + "-" * (len(header) - 2)]
        for bound, c in self.confirmed_best():
            if c is None:
                lines.append(f"  {bound:>5g}  {'':>6}  nothing confirmed within this bound")
                continue
            std = f"{c.test_std:.4f}" if math.isfinite(c.test_std) else "n/a"
            params = ", ".join(_setting(k.removeprefix("axis."), c.params) for k in self._param_keys(c.params))
            default_val = f"  {_figure(defaults.get(bound, math.nan)):>12}" if defaults else ""
            lines.append(
                f"  {bound:>5g}  {c.epsilon:>6.3f}  {c.test_mean:.4f} ± {std:<6}  {c.val_mean:>7.4f}  "
                f"{_figure(c.search_val_accuracy):>10}{default_val}  "
                f"{'trainer defaults' if c.trial == BASELINE else c.trial}, epoch {c.epoch}  {params}"
            )
        lines.append(
            f"  ({len(self.confirmed)} configurations confirmed; the search's {len(self.points)} points, its "
            f"frontier of {len(self.front)} and every confirmation are in frontier.csv)"
        )
        return "\n".join(lines)


def _setting(key: str, params: Mapping[str, Any]) -> str:
    # A confirmed configuration spends its bound at a calibrated σ: a target-ε axis has no value
    # left in it (None), so its σ is shown instead.
    if key == "target_epsilon" and params.get(key) is None and params.get("noise_multiplier") is not None:
        return f"noise_multiplier={_short(params['noise_multiplier'])}"
    return f"{key}={_short(_value(params, key))}"


def _value(params: Mapping[str, Any], key: str) -> Any:
    """``params[key]``, or for ``model_kwargs.NAME`` the NAME of a flat configuration's model_kwargs."""
    name = model_kwarg_name(key)
    kwargs = params.get("model_kwargs")
    if key not in params and name is not None and isinstance(kwargs, Mapping):
        return kwargs.get(name)
    return params.get(key)


def _figure(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "—"


def _short(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4g}"


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None
