"""FederatedConfig: how many clients, how the training set is split over them, how long they train.

A federated run is written by users as one flat mapping, like a single run: dp_core's
``TrainConfig`` keys (the local DP-SGD every client runs: model, optimizer, lr, C, σ or target ε,
batch size, δ, seed) plus the keys of :class:`FederatedConfig` and, optionally,
``kind: federated``. :func:`split_flat` routes each key to its config; :func:`to_flat` is its
inverse. ``epochs`` is not a free setting here: every client trains ``rounds × local_epochs``
local epochs in all, and the flat mapping says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dp_core.config import TrainConfig, known_keys, model_kwarg_name, unknown_key_error
from dp_core.errors import ConfigError, require, require_choice, require_positive

__all__ = ["KIND", "PARTITIONS", "FEDERATED_KEYS", "FederatedConfig", "split_flat", "to_flat", "is_federated"]

#: The value of the flat key ``kind`` that marks a federated configuration.
KIND = "federated"
PARTITIONS: tuple[str, ...] = ("iid", "dirichlet")


def _require_int(value: Any, *, key: str, low: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    require(ok, key=key, value=value, allowed=f"to be an integer >= {low}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FederatedConfig:
    """FedAvg over ``clients`` disjoint shards: ``rounds`` rounds of ``local_epochs`` local epochs.

    ``partition="iid"`` deals the training set out uniformly at random; ``"dirichlet"`` gives
    each client a label-skewed shard, class proportions drawn from Dir(``dirichlet_alpha``)
    (small α: each client sees few classes; large α: close to IID). ``dirichlet_alpha`` is
    ignored for ``"iid"``.
    """

    clients: int = 2
    rounds: int = 5
    local_epochs: int = 1
    partition: str = "iid"
    dirichlet_alpha: float = 0.5

    def __post_init__(self) -> None:
        _require_int(self.clients, key="clients", low=1)
        _require_int(self.rounds, key="rounds", low=1)
        _require_int(self.local_epochs, key="local_epochs", low=1)
        require_choice(self.partition, key="partition", choices=PARTITIONS)
        require_positive(self.dirichlet_alpha, key="dirichlet_alpha")

    @property
    def total_local_epochs(self) -> int:
        """Local epochs every client trains over the whole run."""
        return self.rounds * self.local_epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FEDERATED_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FederatedConfig))


def is_federated(values: Mapping[str, Any]) -> bool:
    """Whether a flat configuration says ``kind: federated``."""
    return values.get("kind") == KIND


def split_flat(values: Mapping[str, Any], *, where: str = "") -> tuple[TrainConfig, FederatedConfig]:
    """One flat mapping -> (the clients' local TrainConfig, the FederatedConfig).

    ``kind`` may be given and must then be ``"federated"``. ``epochs``, if given, must equal
    ``rounds × local_epochs`` (the flat form :func:`to_flat` writes); the returned TrainConfig
    always has that many epochs. Unknown keys fail with the closest known key; ``where`` is
    named in every error.
    """
    place = f" (in {where})" if where else ""
    train_values: dict[str, Any] = {}
    federated_values: dict[str, Any] = {}
    known = tuple(sorted({*known_keys(), *FEDERATED_KEYS, "kind"}))
    for key, value in values.items():
        if key == "kind":
            require(value == KIND, key="kind", value=value, allowed=f"to be {KIND!r} for a federated run{place}")
        elif key in FEDERATED_KEYS:
            federated_values[key] = value
        elif key in known or model_kwarg_name(key) is not None:
            train_values[key] = value
        else:
            raise unknown_key_error(str(key), known, where=where)
    try:
        federated = FederatedConfig(**federated_values)
    except ConfigError as error:
        raise ConfigError(f"{error}{place}") from None
    epochs = federated.total_local_epochs
    if "epochs" in train_values and train_values["epochs"] != epochs:
        raise ConfigError(
            f"Expected epochs to be unset or rounds × local_epochs = {federated.rounds} × "
            f"{federated.local_epochs} = {epochs} in a federated run (every client trains local_epochs "
            f"per round), but got epochs={train_values['epochs']!r}{place}."
        )
    train_values["epochs"] = epochs
    if train_values.get("augmult", 1) != 1:  # the clients' local step draws no augmentation views
        raise ConfigError(
            f"Expected augmult=1 in a federated run (its clients train without augmentation views), but got "
            f"augmult={train_values['augmult']!r}{place}."
        )
    return TrainConfig.from_dict(train_values, where=where), federated


def to_flat(train: TrainConfig, federated: FederatedConfig) -> dict[str, Any]:
    """The flat mapping :func:`split_flat` reads back into ``(train, federated)`` exactly."""
    return {
        "kind": KIND,
        **train.replace(epochs=federated.total_local_epochs).to_dict(),
        **federated.to_dict(),
    }
