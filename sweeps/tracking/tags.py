"""What lets MLflow's UI find a sweep's results: tags on the frontier runs, the filters, the note.

Pure data: the launcher computes the tags from the frontier and hands them to
:meth:`sweeps.tracking.SweepTracker.tag_runs`. A big sweep has thousands of child runs and the UI
shows 100 at a time, so the runs that matter are tagged and found by a filter string:

- ``dpsweep.frontier = true`` on every run with an epoch on the accuracy-vs-ε Pareto frontier;
  ``dpsweep.frontier_epochs`` lists those epochs (a run's last epoch need not be one);
- ``dpsweep.best_for_epsilon_<b> = true`` on the runs of the configuration reported for ε ≤ b, one
  tag per bound: with a confirmation stage, the chosen configuration's confirmation runs (whose
  test accuracies the report averages) and its search trial's run; without one, the search run
  of highest validation accuracy within the bound. Per bound, because a single tag holding
  "1, 3" cannot be matched exactly (``LIKE '%3%'`` also matches "0.3" and "13");
  ``dpsweep.best_for_epsilon`` holds the list, for reading in the runs table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sweeps.results.frontier import ConfirmedConfig, Point

__all__ = ["BEST_FILTER", "FRONTIER_FILTER", "MAX_NOTE_CHARS", "best_filter", "frontier_tags", "sweep_note"]

FRONTIER = "dpsweep.frontier"
BEST_FOR = "dpsweep.best_for_epsilon"
#: Paste into the search box of the experiment's runs table (MLflow's filter syntax).
FRONTIER_FILTER = f"tags.`{FRONTIER}` = 'true'"
#: Every run that is some ε bound's best.
BEST_FILTER = f"tags.`{BEST_FOR}` LIKE '%'"
#: MLflow refuses a tag value longer than this (mlflow.utils.validation.MAX_TAG_VAL_LENGTH).
MAX_NOTE_CHARS = 8000


def _bound(value: float) -> str:
    return f"{value:g}"


def best_filter(bound: float) -> str:
    """The filter string for the best run with ε ≤ ``bound`` (backquoted: "0.5" holds a dot)."""
    return f"tags.`{BEST_FOR}_{_bound(bound)}` = 'true'"


def frontier_tags(
    front: Iterable[Point],
    buckets: Iterable[tuple[float, Point | None]],
    *,
    confirmed_best: Iterable[tuple[float, ConfirmedConfig | None]] | None = None,
    run_of_trial: Mapping[str, str] | None = None,
) -> dict[str, dict[str, str]]:
    """Tags by run id for the runs on the frontier and each bound's best (runs without an id are left out).

    ``confirmed_best`` (the report's choice per bound after the confirmation stage) replaces the
    search's ``buckets`` as "best"; ``run_of_trial`` finds each chosen configuration's search run.
    """
    epochs: dict[str, list[int]] = {}
    for point in front:
        if point.run_id:
            epochs.setdefault(point.run_id, []).append(point.epoch)
    bounds: dict[str, list[float]] = {}
    if confirmed_best is None:
        for bound, point in buckets:
            if point is not None and point.run_id:
                bounds.setdefault(point.run_id, []).append(bound)
    else:
        for bound, chosen in confirmed_best:
            if chosen is not None:
                for run_id in {*chosen.run_ids, (run_of_trial or {}).get(chosen.trial, "")} - {""}:
                    bounds.setdefault(run_id, []).append(bound)
    tags: dict[str, dict[str, str]] = {}
    for run_id, run_epochs in epochs.items():
        tags[run_id] = {FRONTIER: "true", f"{FRONTIER}_epochs": ", ".join(str(e) for e in sorted(set(run_epochs)))}
    for run_id, run_bounds in bounds.items():
        entry = tags.setdefault(run_id, {})
        entry[BEST_FOR] = ", ".join(_bound(b) for b in sorted(run_bounds))
        entry.update({f"{BEST_FOR}_{_bound(b)}": "true" for b in run_bounds})
    return tags


def sweep_note(
    *,
    title: str,
    summary: str,
    details: Sequence[str] = (),
    filters: Mapping[str, str] | None = None,
    limit: int = MAX_NOTE_CHARS,
) -> str:
    """The parent run's description (tag ``mlflow.note.content``, markdown): a title, the frontier
    summary as preformatted text, then ``details`` (each preformatted) and the filter strings.

    Over ``limit`` characters, lines from the middle of the summary (the frontier table's) are left
    out, saying so, until it fits: the full table is in the run's ``frontier.csv``.
    """
    filters = (
        {"runs on the frontier": FRONTIER_FILTER, "each ε bound's best": BEST_FILTER} if filters is None else filters
    )
    tail = [f"```\n{block.strip()}\n```" for block in details if block.strip()]
    # A fenced block, not inline code: the filters hold backquotes themselves.
    tail += [
        "Find these runs among the child runs: paste a filter into the search box of the runs table.",
        *(f"{what[0].upper()}{what[1:]}:\n```\n{text}\n```" for what, text in filters.items()),
    ]
    lines = summary.strip("\n").splitlines()
    for left_out in range(len(lines) + 1):
        head, rest = lines[: (len(lines) - left_out) // 2], lines[(len(lines) - left_out) // 2 + left_out :]
        gap = [f"… {left_out} lines left out: frontier.csv has them all"] if left_out else []
        note = "\n\n".join([f"### {title}", "```\n" + "\n".join([*head, *gap, *rest]) + "\n```", *tail])
        if len(note) <= limit:
            return note
    return note[:limit]
