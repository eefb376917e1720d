"""Splitting a training set into disjoint client shards: IID, or label-skewed by a Dirichlet prior."""

from __future__ import annotations

import numpy as np
import torch

from dp_core.errors import ConfigError, require, require_choice, require_positive
from dp_core.federated._config import PARTITIONS

__all__ = ["partition"]

# A Dirichlet draw can leave a client (almost) empty; it is redrawn, as in Li et al. 2022
# ("Federated Learning on Non-IID Data Silos", NIID-Bench), until every shard holds at least
# this many examples (fewer when the data set is too small to give every client that many).
_MIN_SHARD_SIZE = 10
_MAX_DRAWS = 1000
# Distinguishes the partition's random stream from the clients' streams (see _client.client_seed).
_PARTITION_STREAM = 7


def partition(
    labels: torch.Tensor, *, clients: int, scheme: str, dirichlet_alpha: float, seed: int
) -> list[torch.Tensor]:
    """Disjoint index tensors, one per client, that together cover ``range(len(labels))``.

    ``scheme="iid"``: a seeded random permutation cut into ``clients`` near-equal shards (sizes
    differ by at most one). ``scheme="dirichlet"``: for every class k, proportions
    p_k ~ Dir(α·1) over the clients and class k's examples are dealt out in those proportions
    (Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", arXiv:1909.06335). Each shard's indices are sorted; the
    result depends only on ``labels``, the arguments and ``seed``.
    """
    require_choice(scheme, key="partition", choices=PARTITIONS)
    count = len(labels)
    require(
        isinstance(clients, int) and not isinstance(clients, bool) and 1 <= clients <= count,
        key="clients",
        value=clients,
        allowed=f"to be an integer in [1, {count}] (the training-set size)",
    )
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PARTITION_STREAM]))
    if scheme == "iid":
        order = rng.permutation(count)
        shards = np.array_split(order, clients)
    else:
        require_positive(dirichlet_alpha, key="dirichlet_alpha")
        shards = _dirichlet(labels.cpu().numpy(), clients=clients, alpha=dirichlet_alpha, rng=rng)
    return [torch.as_tensor(np.sort(shard), dtype=torch.long) for shard in shards]


def _dirichlet(labels: np.ndarray, *, clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    minimum = min(_MIN_SHARD_SIZE, len(labels) // clients)
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == k)) for k in classes]
    smallest = 0
    for _ in range(_MAX_DRAWS):
        shards: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for members in by_class:
            proportions = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for client, piece in enumerate(np.split(members, cuts)):
                shards[client].append(piece)
        joined = [np.concatenate(pieces) for pieces in shards]
        smallest = min(len(shard) for shard in joined)
        if smallest >= minimum:
            return joined
    raise ConfigError(
        f"Expected dirichlet_alpha to give every one of the {clients} clients at least {minimum} "
        f"examples, but got dirichlet_alpha={alpha!r}: in {_MAX_DRAWS} draws some client always held "
        f"fewer (last draw: {smallest}). Raise dirichlet_alpha or use fewer clients."
    )
