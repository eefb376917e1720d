"""Client executors: where the clients of a federated run train. One interface, two backends.

The server hands an executor the clients' setups once and then, every round, the global
parameters; the executor returns every client's update in client order. :class:`InProcessExecutor`
trains the clients one after another in the calling process (debugging, the command line, no
Ray). ``sweeps.workers.federated_actors.RayClientExecutor`` runs each client as a Ray actor; dp_core
knows nothing of Ray, it only accepts any :class:`ClientExecutor`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from types import TracebackType

import torch

from dp_core.federated._client import ClientSetup, ClientUpdate, LocalClient

__all__ = ["ClientExecutor", "InProcessExecutor"]


class ClientExecutor(abc.ABC):
    """Runs the clients' local training for the server. Use once per run, as a context manager."""

    @abc.abstractmethod
    def start(self, setups: Sequence[ClientSetup]) -> None:
        """Create one client per setup; they keep their state until :meth:`close`."""

    @abc.abstractmethod
    def train_round(self, global_state: Mapping[str, torch.Tensor], *, round_index: int) -> list[ClientUpdate]:
        """Every client's update after training one round from ``global_state``, in client order."""

    def close(self) -> None:  # noqa: B027 (optional: an executor with nothing to release keeps this)
        """Release the clients (idempotent)."""

    def __enter__(self) -> ClientExecutor:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class InProcessExecutor(ClientExecutor):
    """Clients train sequentially in this process, each with ``num_threads`` torch threads."""

    def __init__(self, *, num_threads: int = 1) -> None:
        self.num_threads = num_threads
        self._clients: list[LocalClient] = []

    def start(self, setups: Sequence[ClientSetup]) -> None:
        self._clients = [LocalClient(setup, num_threads=self.num_threads) for setup in setups]

    def train_round(self, global_state: Mapping[str, torch.Tensor], *, round_index: int) -> list[ClientUpdate]:
        return [client.train_round(global_state, round_index=round_index) for client in self._clients]

    def close(self) -> None:
        self._clients = []
