"""Federated DP-SGD: FedAvg over clients that each train with dp_core's DP-SGD on their own shard.

Every round each client loads the global model, trains ``local_epochs`` epochs of DP-SGD on
its shard (Poisson sampling at q_i = B / n_i, clipping, Gaussian noise: the same Opacus step as
``dp_core.train``), and the server averages the clients' parameters weighted by shard size.
Each client's ε is accounted on its own data; the run's ε is the maximum over clients.

Start with :func:`train_federated` or ``python -m dp_core.federated --dataset digits --clients 2
--rounds 5``. Clients run in-process by default; any :class:`ClientExecutor` can run them
elsewhere (``sweeps.workers.federated_actors.RayClientExecutor`` runs them as Ray actors).
"""

import importlib
from typing import TYPE_CHECKING, Any

# The configuration and the privacy plan are torch-free: a sweep's space (sweeps.space) reads them
# without loading torch and Opacus (seconds), so that a space file with a typo is refused at once.
from dp_core.federated._config import (
    FEDERATED_KEYS,
    KIND,
    PARTITIONS,
    FederatedConfig,
    is_federated,
    split_flat,
    to_flat,
)
from dp_core.federated._plan import ClientPrivacy, FederatedPlan, plan_federated

if TYPE_CHECKING:
    from dp_core.federated._client import ClientSetup, ClientUpdate, LocalClient, client_seed
    from dp_core.federated._executor import ClientExecutor, InProcessExecutor
    from dp_core.federated._partition import partition
    from dp_core.federated._server import FederatedResult, RoundReport, fed_avg, partition_data, train_federated

#: The names that need torch, and the module of each: imported on first use (PEP 562).
_TORCH_NAMES = {
    **dict.fromkeys(("ClientSetup", "ClientUpdate", "LocalClient", "client_seed"), "_client"),
    **dict.fromkeys(("ClientExecutor", "InProcessExecutor"), "_executor"),
    "partition": "_partition",
    **dict.fromkeys(("FederatedResult", "RoundReport", "fed_avg", "partition_data", "train_federated"), "_server"),
}


def __getattr__(name: str) -> Any:
    module = _TORCH_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once: later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "KIND",
    "PARTITIONS",
    "FEDERATED_KEYS",
    "FederatedConfig",
    "split_flat",
    "to_flat",
    "is_federated",
    "partition",
    "partition_data",
    "ClientPrivacy",
    "FederatedPlan",
    "plan_federated",
    "ClientSetup",
    "ClientUpdate",
    "LocalClient",
    "client_seed",
    "ClientExecutor",
    "InProcessExecutor",
    "fed_avg",
    "RoundReport",
    "FederatedResult",
    "train_federated",
]
