"""The end of a sweep: frontier files and the console summary (no MLflow, no Ray here)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sweeps.frontier import (Point, best_per_bucket, default_buckets, format_frontier_table, pareto_front,
                             plot_frontier, write_frontier_csv)

__all__ = ["FrontierReport", "build_report"]


class FrontierReport:
    """The frontier of a set of points, the best point per ε bucket, and the files showing them."""

    def __init__(self, points: Sequence[Point], *, budget: float | None, delta: float, accountant: str,
                 axis_keys: Sequence[str]) -> None:
        self.points = list(points)
        self.front = pareto_front(self.points)
        self.buckets = best_per_bucket(self.points, default_buckets(budget))
        self.budget = budget
        self.delta = delta
        self.accountant = accountant
        self.axis_keys = list(axis_keys)

    def write(self, folder: Path, *, title: str, extra_lines: Mapping[str, float] | None = None) -> list[Path]:
        """frontier.csv, frontier.png and best_per_epsilon.json in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        csv_path, png_path, best_path = folder / "frontier.csv", folder / "frontier.png", folder / "best_per_epsilon.json"
        write_frontier_csv(csv_path, self.points, self.front)
        plot_frontier(png_path, self.points, self.front, budget=self.budget, delta=self.delta,
                      accountant=self.accountant, extra_lines=extra_lines,
                      title=f"{title}: accuracy vs ε ({len(self.points)} points, {len(self.front)} on the frontier)")
        best_path.write_text(json.dumps([
            {"epsilon_at_most": bound, "accuracy": p.accuracy, "epsilon": p.epsilon, "delta": self.delta,
             "accountant": self.accountant, "run_id": p.run_id, "trial": p.trial, "epoch": p.epoch,
             "params": {k: p.params.get(k) for k in self.axis_keys}}
            if p is not None else {"epsilon_at_most": bound, "accuracy": None}
            for bound, p in self.buckets
        ], indent=2))
        return [csv_path, png_path, best_path]

    def best(self) -> Point | None:
        return max((p for p in self.points if math.isfinite(p.epsilon)), key=lambda p: p.accuracy, default=None)

    def summary(self) -> str:
        lines = [format_frontier_table(self.front, delta=self.delta, accountant=self.accountant,
                                       param_keys=self.axis_keys), ""]
        for bound, p in self.buckets:
            text = f"acc {p.accuracy:.4f} at ε = {p.epsilon:.3f} ({p.trial}, epoch {p.epoch})" if p else "no trial"
            lines.append(f"  best with ε ≤ {bound:<5g} (δ = {self.delta:g}, {self.accountant.upper()}): {text}")
        return "\n".join(lines)


def build_report(points: Sequence[Point], **kwargs: Any) -> FrontierReport:
    return FrontierReport(points, **kwargs)
