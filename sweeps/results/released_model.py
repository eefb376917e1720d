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
"""

from __future__ import annotations

import dataclasses
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
from sweeps.results.frontier import ConfirmedConfig

__all__ = [
    "MODEL_SEED_INDEX",
    "MODELS_FOLDER",
    "KeptModel",
    "bound_alias",
    "load_weights",
    "model_tags",
    "registered_name",
    "save_weights",
    "weights_path",
]

#: The sweep folder's sub-folder where refit models wait for registration.
MODELS_FOLDER = "models"


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
