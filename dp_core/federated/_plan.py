"""A federated run's privacy, planned before it trains: one σ, each client's ε after every round.

Each client runs DP-SGD on its own shard only: Poisson sampling at rate q_i = B / n_i over its
n_i examples, ``local_epochs × ⌊1/q_i⌋`` steps per round. An example lives on exactly one
client, and everything the other clients and the server compute from it is post-processing of
that client's noisy updates, so an example on client i is protected by client i's (ε_i, δ)
(parallel composition): the run's guarantee is ε = max_i ε_i at δ. Each client's shard is
treated as that client's dataset, as in cross-silo federated learning where data starts out on
the clients; the simulated split of one training set is not part of the mechanism.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from dp_core import accounting
from dp_core.config import ConfigError, TrainConfig
from dp_core.federated._config import FederatedConfig

__all__ = ["ClientPrivacy", "FederatedPlan", "plan_federated"]

# Calibration takes the largest σ any client needs; if the accountant's numerics make ε not
# exactly monotone in σ, σ is raised by this factor until every client fits the target.
_NUDGE = 1.01
_MAX_NUDGES = 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientPrivacy:
    """One client's mechanism: ``epsilon_by_round[r]`` is its ε after round r+1 (all rounds planned)."""

    client: int
    shard_size: int
    sample_rate: float
    steps_per_round: int
    epsilon_by_round: tuple[float, ...]

    def steps_after(self, rounds: int) -> int:
        return self.steps_per_round * rounds


@dataclasses.dataclass(frozen=True, kw_only=True)
class FederatedPlan:
    """What a federated run will spend, computed before it runs.

    ``max_rounds`` is where training stops: all planned rounds, or fewer when the next round
    would take some client past the ε budget (a federated run stops at round boundaries).
    """

    private: bool
    noise_multiplier: float
    delta: float
    accountant: str
    planned_rounds: int
    max_rounds: int
    clients: tuple[ClientPrivacy, ...]

    @property
    def stops_early(self) -> bool:
        return self.max_rounds < self.planned_rounds

    @property
    def epsilon_by_round(self) -> tuple[float, ...]:
        """The run's ε after each planned round: the maximum over clients."""
        return tuple(max(values) for values in zip(*(c.epsilon_by_round for c in self.clients), strict=True))

    @property
    def planned_epsilon(self) -> float:
        """ε of all planned rounds (budget ignored), maximum over clients."""
        return self.epsilon_by_round[-1]

    @property
    def epsilon(self) -> float:
        """ε where the run stops (``max_rounds``), maximum over clients."""
        return self.epsilon_by_round[self.max_rounds - 1]

    def client_epsilons(self, rounds: int) -> tuple[float, ...]:
        """Each client's ε after ``rounds`` rounds (1 <= rounds <= planned_rounds)."""
        return tuple(c.epsilon_by_round[rounds - 1] for c in self.clients)

    def spent(self, epsilon: float) -> accounting.PrivacySpent:
        return accounting.PrivacySpent(epsilon=epsilon, delta=self.delta, accountant=self.accountant)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (ε = ∞ stays a float); :meth:`from_dict` reads it back exactly."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FederatedPlan:
        clients = tuple(
            ClientPrivacy(**{**c, "epsilon_by_round": tuple(c["epsilon_by_round"])}) for c in values["clients"]
        )
        return cls(**{**values, "clients": clients})

    def check_matches(self, config: TrainConfig, federated: FederatedConfig, *, shard_sizes: Sequence[int]) -> None:
        """Raise ConfigError unless this plan describes ``config`` on these shards (else its ε is wrong)."""
        privacy = config.privacy
        expected: dict[str, Any] = {
            "private": privacy.is_private,
            "delta": privacy.delta,
            "accountant": privacy.accountant,
            "planned_rounds": federated.rounds,
            "shard_sizes": [int(n) for n in shard_sizes],
            "sample_rates": [config.resolved_sample_rate(n) for n in shard_sizes],
            "steps_per_round": [federated.local_epochs * config.steps_per_epoch(n) for n in shard_sizes],
        }
        actual: dict[str, Any] = {
            "private": self.private,
            "delta": self.delta,
            "accountant": self.accountant,
            "planned_rounds": self.planned_rounds,
            "shard_sizes": [c.shard_size for c in self.clients],
            "sample_rates": [c.sample_rate for c in self.clients],
            "steps_per_round": [c.steps_per_round for c in self.clients],
        }
        if privacy.is_private and privacy.noise_multiplier is not None:
            expected["noise_multiplier"], actual["noise_multiplier"] = (
                float(privacy.noise_multiplier),
                self.noise_multiplier,
            )
        wrong = {key: (actual[key], value) for key, value in expected.items() if actual[key] != value}
        if privacy.is_private and privacy.epsilon_budget is not None and self.epsilon > privacy.epsilon_budget:
            wrong["epsilon"] = (self.epsilon, privacy.epsilon_budget)
        if wrong:
            raise ConfigError(
                f"Expected the federated privacy plan to match the configuration, but got (plan, config) = {wrong}."
            )


def _client_epsilons(
    noise_multiplier: float, sample_rate: float, steps_per_round: int, rounds: int, delta: float, accountant: str
) -> tuple[float, ...]:
    return tuple(
        accounting.epsilons(
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=[steps_per_round * (r + 1) for r in range(rounds)],
            delta=delta,
            accountant=accountant,
        )
    )


def _calibrate(config: TrainConfig, target: float, mechanisms: Sequence[tuple[float, int]]) -> float:
    """The smallest σ (to the accountant's tolerance) with ε ≤ target on every client."""
    privacy = config.privacy
    sigma = max(
        accounting.noise_multiplier_for(
            target_epsilon=target,
            sample_rate=q,
            steps=steps,
            delta=privacy.delta,
            accountant=privacy.accountant,
        )
        for q, steps in set(mechanisms)
    )
    for _ in range(_MAX_NUDGES):
        worst = max(
            accounting.epsilon(
                noise_multiplier=sigma, sample_rate=q, steps=steps, delta=privacy.delta, accountant=privacy.accountant
            )
            for q, steps in set(mechanisms)
        )
        if worst <= target:
            return sigma
        sigma *= _NUDGE
    raise ConfigError(
        f"Expected a noise multiplier that keeps every client within target_epsilon={target:g}, but at "
        f"noise_multiplier={sigma:.4g} some client still spends ε = {worst:.4g} (δ = {privacy.delta:g}, "
        f"{privacy.accountant.upper()} accountant). Use accountant='rdp' or raise target_epsilon."
    )


def plan_federated(config: TrainConfig, federated: FederatedConfig, *, shard_sizes: Sequence[int]) -> FederatedPlan:
    """Calibrate one σ for all clients if a target ε is given, then each client's ε per round.

    ``config`` is the clients' local training configuration (its ``epochs`` is ignored: clients
    train ``federated.local_epochs`` per round). With a target ε, σ is the smallest that keeps
    *every* client within it. Raises ConfigError when a shard is too small for the batch size
    or for δ (δ < 1/n_i), or when the budget does not allow one round.
    """
    if len(shard_sizes) != federated.clients:
        raise ConfigError(
            f"Expected one shard size per client ({federated.clients}), "
            f"but got {len(shard_sizes)}: {list(shard_sizes)}."
        )
    privacy = config.privacy
    rounds = federated.rounds
    for client, size in enumerate(shard_sizes):
        try:
            config.check_against(size)
        except ConfigError as error:
            raise ConfigError(f"{error} This is client {client}'s shard of {size} examples.") from None
    sample_rates = [config.resolved_sample_rate(size) for size in shard_sizes]
    steps_per_round = [federated.local_epochs * config.steps_per_epoch(size) for size in shard_sizes]

    if not privacy.is_private:
        noise_multiplier = 0.0
    elif privacy.noise_multiplier is not None:
        noise_multiplier = float(privacy.noise_multiplier)
    else:
        assert privacy.target_epsilon is not None  # PrivacyConfig guarantees one of the two
        mechanisms = [(q, steps * rounds) for q, steps in zip(sample_rates, steps_per_round, strict=True)]
        noise_multiplier = _calibrate(config, privacy.target_epsilon, mechanisms)

    clients = []
    for client, (size, q, steps) in enumerate(zip(shard_sizes, sample_rates, steps_per_round, strict=True)):
        epsilons = (
            _client_epsilons(noise_multiplier, q, steps, rounds, privacy.delta, privacy.accountant)
            if privacy.is_private
            else tuple(math.inf for _ in range(rounds))
        )
        clients.append(
            ClientPrivacy(
                client=client, shard_size=int(size), sample_rate=q, steps_per_round=steps, epsilon_by_round=epsilons
            )
        )

    by_round = [max(values) for values in zip(*(c.epsilon_by_round for c in clients), strict=True)]
    max_rounds = rounds
    budget = privacy.epsilon_budget
    if privacy.is_private and budget is not None and by_round[-1] > budget:
        max_rounds = sum(1 for eps in by_round if eps <= budget)  # ε grows with rounds
        if max_rounds == 0:
            raise ConfigError(
                f"Expected epsilon_budget to allow at least one round, but got epsilon_budget={budget}: one "
                f"round with noise_multiplier={noise_multiplier:.3g} already spends ε = {by_round[0]:.4g} on "
                f"some client (δ = {privacy.delta:g}, {privacy.accountant.upper()} accountant)."
            )
    return FederatedPlan(
        private=privacy.is_private,
        noise_multiplier=noise_multiplier,
        delta=privacy.delta,
        accountant=privacy.accountant,
        planned_rounds=rounds,
        max_rounds=max_rounds,
        clients=tuple(clients),
    )
