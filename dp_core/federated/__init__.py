"""Federated DP-SGD: FedAvg over clients that each train with dp_core's DP-SGD on their own shard.

Every round each client loads the global model, trains ``local_epochs`` epochs of DP-SGD on
its shard (Poisson sampling at q_i = B / n_i, clipping, Gaussian noise: the same Opacus step as
``dp_core.train``), and the server averages the clients' parameters weighted by shard size.
Each client's ε is accounted on its own data; the run's ε is the maximum over clients.

Start with :func:`train_federated` or ``python -m dp_core.federated --dataset digits --clients 2
--rounds 5``. Clients run in-process by default; any :class:`ClientExecutor` can run them
elsewhere (``sweeps.workers.federated_actors.RayClientExecutor`` runs them as Ray actors).
"""

from dp_core.federated._client import ClientSetup, ClientUpdate, LocalClient, client_seed
from dp_core.federated._config import (
    FEDERATED_KEYS,
    KIND,
    PARTITIONS,
    FederatedConfig,
    is_federated,
    split_flat,
    to_flat,
)
from dp_core.federated._executor import ClientExecutor, InProcessExecutor
from dp_core.federated._partition import partition
from dp_core.federated._plan import ClientPrivacy, FederatedPlan, plan_federated
from dp_core.federated._server import FederatedResult, RoundReport, fed_avg, partition_data, train_federated

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
