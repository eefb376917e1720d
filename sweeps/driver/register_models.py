"""Each reported ε bound's model into MLflow's Model Registry, at the end of a sweep (the names, the
rule and the tags are :mod:`sweeps.results.released_model`'s; the writes the tracker's)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sweeps.results.confirm import MODEL_SEED_INDEX, TRAIN_AND_VALIDATION, refit_run_name
from sweeps.results.frontier_report import FrontierReport
from sweeps.results.released_model import bound_alias, model_tags, registered_name, weights_path

__all__ = ["register_models"]


def register_models(
    report: FrontierReport, privacy: Any, *, tracker: Any, sweep_dir: Path, space_name: str, sweep_name: str
) -> list[str]:
    """Register the refit model of every reported bound as ``dpsweep-<space>@eps-<bound>``; the aliases.

    Only bounds whose chosen configuration was refit have one (its run of seed index
    MODEL_SEED_INDEX). A private-selection sweep has none: its space cannot ask for a confirmation
    stage, and what it releases (``release/selected_model.json``) is a search trial, whose weights
    no worker keeps; nothing of its other trials is registered either.
    """
    name = registered_name(space_name)
    statement = privacy.summary() if privacy is not None else None
    aliases = []
    for bound, chosen in report.confirmed_best():
        if chosen is None or chosen.trained_on != TRAIN_AND_VALIDATION:
            continue
        run = refit_run_name(chosen, MODEL_SEED_INDEX)
        path = weights_path(sweep_dir, run)
        if not path.exists():
            print(
                f"  no model to register for ε ≤ {bound:g}: its refit run {run} did not train to the end",
                file=sys.stderr,
            )
            continue
        alias = bound_alias(bound)
        tracker.register_model(
            weights=str(path),
            name=name,
            alias=alias,
            tags=model_tags(chosen, refit_run=run, sweep=sweep_name, privacy_statement=statement),
        )
        aliases.append(alias)
    if aliases:
        print(
            f"models: {len(aliases)} registered as {name} ({', '.join(f'@{a}' for a in aliases)}); "
            f'load one with mlflow.pytorch.load_model("models:/{name}@{aliases[-1]}")'
        )
    return aliases
