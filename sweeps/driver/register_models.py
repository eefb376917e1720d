"""Each reported ε bound's model into MLflow's Model Registry, at the end of a sweep, or the one model
a private-selection sweep releases (the names, the rule and the tags are
:mod:`sweeps.results.released_model`'s; the writes the tracker's)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweeps.results.confirm import MODEL_SEED_INDEX, TRAIN_AND_VALIDATION, refit_run_name
from sweeps.results.frontier_report import FrontierReport
from sweeps.results.released_model import (
    SELECTED_ALIAS,
    bound_alias,
    keep_selected_weights,
    model_tags,
    registered_name,
    selected_model_tags,
    selected_release,
    weights_path,
)

__all__ = ["register_models", "register_selected_model"]

#: The tag that finds a private selection's version again (by the selected trial's run id).
SELECTED_RUN_TAG = "dpsweep.trial_run_id"


def register_models(
    report: FrontierReport, privacy: Any, *, tracker: Any, sweep_dir: Path, space_name: str, sweep_name: str
) -> list[str]:
    """Register the refit model of every reported bound as ``dpsweep-<space>@eps-<bound>``; the aliases.

    Only bounds whose chosen configuration was refit have one (its run of seed index
    MODEL_SEED_INDEX). A private-selection sweep has none (its space cannot ask for a confirmation
    stage): what it releases is registered by :func:`register_selected_model`.
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


def register_selected_model(
    best: Any,
    privacy: Any,
    *,
    trial: Any,
    fetch: Callable[[Path], bool],
    tracker: Any,
    sweep_dir: Path,
    space_name: str,
) -> str | None:
    """Register what a private-selection sweep releases as ``dpsweep-<space>@selected``: the model of
    the selected trial (``trial``, the PlannedTrial named ``best.trial``) at the selected epoch, as its
    worker kept it (not retrained: a retraining would be another run on the data, outside the sweep ε);
    the alias, or None (said in one line: nothing to register).

    ``best`` is the search point the release names, ``privacy`` the sweep's SelectionPrivacy,
    ``trial`` None if the sweep drew no trial of that name.
    ``fetch(path)`` copies the trial's kept model (sweeps.workers.trial's BEST_MODEL_FILE, from its
    checkpoint in the sweep's Ray storage) to ``path``; whether it could. Nothing of the other trials
    is read or registered, and the tags say no more than ``release/selected_model.json``.
    """
    if trial is None:
        print(f"  the selected model is not registered: {best.trial} is no trial this sweep drew", file=sys.stderr)
        return None
    path = weights_path(sweep_dir, trial.name)
    if not path.exists():  # a resumed sweep kept it already
        fetched = path.with_name(path.name + ".kept")
        fetched.parent.mkdir(parents=True, exist_ok=True)
        why = f"its trial {trial.name} kept no model of its best epoch in the sweep's Ray storage"
        if fetch(fetched):
            why = keep_selected_weights(fetched, path, best=best, train=trial.train_config, run_key=trial.key)
            fetched.unlink()
        if why is not None:
            print(f"  the selected model is not registered: {why}", file=sys.stderr)
            return None
    name = registered_name(space_name)
    tracker.register_model(
        weights=str(path),
        name=name,
        alias=SELECTED_ALIAS,
        tags=selected_model_tags(selected_release(best, privacy)),
        run_tag=SELECTED_RUN_TAG,
    )
    print(
        f"model: the selected model registered as {name}@{SELECTED_ALIAS}; load it with "
        f'mlflow.pytorch.load_model("models:/{name}@{SELECTED_ALIAS}")'
    )
    return SELECTED_ALIAS
