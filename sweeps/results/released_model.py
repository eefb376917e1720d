"""The model a sweep hands over for each ε bound: which run it is, where its weights wait, how it is named.

For every reported bound, the chosen configuration is refit ``seeds`` times
(:mod:`sweeps.results.confirm`). The model registered for the bound is the refit run of seed
index :data:`MODEL_SEED_INDEX` (the first), a rule fixed before any refit run is trained: picking
the refit with the best test accuracy would make the choice read test data. Its test figures
are the refit runs' mean ± std, which is what that one model is expected to score.

Its weights cross from the worker (:class:`sweeps.protocol.TrainedModel`) and are kept in the
sweep folder (``models/<run name>.pt``) before the run counts as done, so that a launcher killed
before registration registers it on ``--resume`` without training again. The registry names
come from here: one registered model per space (:func:`registered_name`) and one alias per ε
bound (:func:`bound_alias`).

A private-selection sweep has no refit: what it releases is one search trial's model at the epoch
the release names (:func:`selected_release`, ``release/selected_model.json``), the weights that
trial kept of its best epoch (``dp_core.train``'s ``best_model_path``), registered under the alias
:data:`SELECTED_ALIAS` with tags that say no more than the release file (:func:`selected_model_tags`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dp_core.config import TrainConfig
from dp_core.models import build_model
from sweeps.protocol import TrainedModel
from sweeps.results.confirm import MODEL_SEED_INDEX
from sweeps.results.frontier import ConfirmedConfig, Point

__all__ = [
    "MODEL_SEED_INDEX",
    "MODELS_FOLDER",
    "SELECTED_ALIAS",
    "KeptModel",
    "bound_alias",
    "keep_selected_weights",
    "load_weights",
    "model_tags",
    "registered_name",
    "save_weights",
    "selected_model_tags",
    "selected_release",
    "weights_path",
]

#: The sweep folder's sub-folder where refit models wait for registration.
MODELS_FOLDER = "models"
#: The alias of the model a private-selection sweep releases.
SELECTED_ALIAS = "selected"


def registered_name(space_name: str) -> str:
    """The Model Registry name of a space's models: ``dpsweep-<space>``, e.g. ``dpsweep-digits_quick``."""
    return f"dpsweep-{space_name}"


def bound_alias(bound: float) -> str:
    """The alias of an ε bound's model: ``eps-`` and the bound as ``%g``, a dot written ``_``
    (MLflow's aliases take letters, digits, ``_`` and ``-`` only): 3 -> ``eps-3``, 0.5 -> ``eps-0_5``.

    >>> bound_alias(3.0), bound_alias(0.5), bound_alias(8)
    ('eps-3', 'eps-0_5', 'eps-8')
    """
    if not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
        raise ValueError(f"Expected a finite bound > 0, but got bound={bound!r}.")
    return "eps-" + f"{bound:g}".replace(".", "_").replace("+", "")


def weights_path(sweep_dir: Path, run_name: str) -> Path:
    """Where a refit run's model waits in the sweep folder."""
    return Path(sweep_dir) / MODELS_FOLDER / f"{run_name}.pt"


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeptModel:
    """A kept model, built again: the module (eval mode), its input shape (C, H, W), and the trial key
    of the run that trained it (its child run's ``dpsweep.trial_key``)."""

    model: nn.Module
    input_shape: tuple[int, int, int]
    run_key: str


def save_weights(path: Path, model: TrainedModel, *, train: Mapping[str, Any], run_key: str) -> None:
    """Keep a run's trained model (weights, data shape, model name) and its run's trial key at
    ``path``, written whole or not at all."""
    config = TrainConfig.from_dict(dict(train))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(
        {
            "state_dict": dict(model.state_dict),
            "input_shape": tuple(model.input_shape),
            "num_classes": model.num_classes,
            "model": config.model.model,
            "gn_groups": config.model.gn_groups,
            # The builder's own arguments (a WRN's depth, an own model's width) and where its code lives:
            # without them the architecture built again is the builder's default, not the trained one.
            "model_kwargs": dict(config.model.model_kwargs),
            "fix_model": config.model.fix_model,
            "code": list(config.code),
            "run_key": run_key,
        },
        partial,
    )
    partial.replace(path)  # a launcher killed mid-write leaves no torn file under the final name


def load_weights(path: Path) -> KeptModel:
    """The model kept at ``path`` (:func:`save_weights`), built again and loaded."""
    kept = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(
        kept["model"],
        input_shape=tuple(kept["input_shape"]),
        num_classes=kept["num_classes"],
        gn_groups=kept["gn_groups"],
        model_kwargs=kept.get("model_kwargs"),  # files kept before these keys existed: zoo defaults
        fix_model=kept.get("fix_model", False),
        code=tuple(kept.get("code", ())),
    )
    model.load_state_dict(kept["state_dict"])
    return KeptModel(model=model.eval(), input_shape=tuple(kept["input_shape"]), run_key=kept["run_key"])


def model_tags(
    confirmed: ConfirmedConfig, *, refit_run: str, sweep: str, privacy_statement: str | None
) -> dict[str, str]:
    """The tags of a bound's registered model version: its ε with δ and accountant, what it trained
    on, its test accuracy (the refit runs' mean ± std), which refit run it is, and the sweep's
    privacy statement (what its ε covers and what choosing it cost)."""
    assert confirmed.bound is not None
    params = confirmed.params
    delta, accountant = params.get("delta"), str(params.get("accountant", "")).upper()
    own = (
        f"ε = {confirmed.epsilon:.3f} (δ = {delta}, {accountant} accountant) covers training this model alone, "
        f"on {confirmed.trained_on}, within the bound ε ≤ {confirmed.bound:g}. Choosing its configuration read "
        "the data too (the search and the confirmation stage): what that costs is the sweep's statement below."
    )
    std = "" if math.isnan(confirmed.test_std) else f" ± {confirmed.test_std:.4f}"
    return {
        "dpsweep.epsilon": f"{confirmed.epsilon:.6g}",
        "dpsweep.epsilon_bound": f"{confirmed.bound:g}",
        "dpsweep.delta": str(delta),
        "dpsweep.accountant": accountant.lower(),
        "trained_on": confirmed.trained_on,
        "dpsweep.test_accuracy": f"{confirmed.test_mean:.4f}{std} (mean ± std over {confirmed.seeds} refit runs)",
        "dpsweep.test_accuracy_mean": f"{confirmed.test_mean:.6g}",
        "dpsweep.test_accuracy_std": f"{confirmed.test_std:.6g}",
        "dpsweep.refit_run": refit_run,
        "dpsweep.model_rule": f"refit seed {MODEL_SEED_INDEX + 1} of {confirmed.seeds}, fixed before any was evaluated",
        "dpsweep.trial": confirmed.trial,
        "dpsweep.sweep": sweep,
        "dpsweep.privacy_statement": own + ("\n" + privacy_statement if privacy_statement else ""),
    }


def selected_release(best: Point, privacy: Any) -> dict[str, Any]:
    """What a private-selection sweep releases (``release/selected_model.json``), and nothing else.

    The selected configuration (``best``: the search point of highest validation accuracy), its
    epoch and score, and the sweep ε that covers them (``privacy``: a SelectionPrivacy). Not K, not
    the seed, not the other trials, not the naive composition (it grows with K): knowing K voids the
    sweep ε (sweeps.privacy.selection), and the rest is covered only by naive composition.
    """
    return {
        "hyperparameters": {k.removeprefix("axis."): v for k, v in best.params.items() if k.startswith("axis.")},
        "epoch": best.epoch,
        "val_accuracy": best.accuracy,
        "trained_on": "train",
        "sweep_epsilon": privacy.sweep_epsilon,
        "delta": privacy.delta,
        "accountant": privacy.accountant,
        "guarantee": (
            f"best of K ~ {privacy.distribution} (mean {privacy.mean:g}) random trials, Papernot & Steinke 2022"
        ),
    }


def selected_model_tags(release: Mapping[str, Any]) -> dict[str, str]:
    """The tags of a private selection's registered model: the release's fields (:func:`selected_release`),
    each under ``dpsweep.``, and a privacy statement made of them alone."""
    accountant = str(release["accountant"]).lower()
    statement = (
        f"sweep ε = {release['sweep_epsilon']:.3f} (δ = {release['delta']:g}, {accountant.upper()} accountant) covers "
        f"releasing this model and its hyperparameters, selected as the {release['guarantee']}; it covers "
        "nothing else of the sweep."
    )
    return {
        "dpsweep.sweep_epsilon": f"{release['sweep_epsilon']:.6g}",
        "dpsweep.delta": f"{release['delta']:g}",
        "dpsweep.accountant": accountant,
        "dpsweep.guarantee": str(release["guarantee"]),
        "dpsweep.val_accuracy": f"{release['val_accuracy']:.6g}",
        "dpsweep.epoch": str(release["epoch"]),
        "dpsweep.hyperparameters": json.dumps(release["hyperparameters"], sort_keys=True),
        "trained_on": str(release["trained_on"]),
        "dpsweep.privacy_statement": statement,
    }


def keep_selected_weights(
    best_model: Path, path: Path, *, best: Point, train: Mapping[str, Any], run_key: str
) -> str | None:
    """Keep the selected trial's model at ``path`` (:func:`save_weights`) from the file its worker kept of
    its best epoch (``best_model``, dp_core.train's ``best_model_path``); None, or why it is not the
    released model (then nothing is kept): its epoch and validation accuracy must be ``best``'s."""
    kept = torch.load(best_model, map_location="cpu", weights_only=True)
    if kept["epoch"] != best.epoch or not math.isclose(kept["val_accuracy"], best.accuracy, rel_tol=1e-12):
        return (
            f"Expected the kept model of {best.trial} at epoch {best.epoch} (val accuracy {best.accuracy:.6g}), "
            f"but got epoch {kept['epoch']} (val accuracy {kept['val_accuracy']:.6g})"
        )
    model = TrainedModel(
        state_dict=kept["state_dict"], input_shape=tuple(kept["input_shape"]), num_classes=kept["num_classes"]
    )
    save_weights(path, model, train=train, run_key=run_key)
    return None
