"""A sweep's results: the accuracy-vs-ε frontier, its plot, the confirmation stage's choices, the report.

``frontier``: points, the Pareto set, ε buckets, the CSV. ``frontier_plot``: ``frontier.png``.
``confirm``: the leading configurations of each ε bucket retrained with fresh seeds.
``frontier_report``: the frontier files and the console summary. ``released_model``: which refit
run is a bound's model, its kept weights, its registry name, alias and tags. ``compare``: several
sweeps' confirmed frontiers on one plot (``python -m sweeps.compare``). Pure: no Ray, MLflow or Optuna.
"""

from sweeps.results.frontier import (
    DEFAULT_BUCKETS,
    ConfirmedConfig,
    Point,
    best_per_bucket,
    default_buckets,
    pareto_front,
)
from sweeps.results.frontier_plot import plot_frontier
from sweeps.results.frontier_report import FrontierReport

__all__ = [
    "DEFAULT_BUCKETS",
    "ConfirmedConfig",
    "FrontierReport",
    "Point",
    "best_per_bucket",
    "default_buckets",
    "pareto_front",
    "plot_frontier",
    "compare",
    "confirm",
    "frontier",
    "frontier_plot",
    "frontier_report",
    "released_model",
]
