"""A run's privacy, planned before it trains: σ, sampling rate, steps, and ε after every epoch.

The DP-SGD mechanism of a run is fully described by (σ, q, steps, δ). Everything a sweep needs
to decide whether to start a trial, and everything the trainer reports per epoch, follows from
that description by pure functions, so it is computed once here instead of by a stateful
accountant during training.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from dp_core import accounting
from dp_core.accounting import PrivacySpent
from dp_core.config import ConfigError, TrainConfig

__all__ = ["PrivacyPlan", "check_plan", "plan_privacy"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyPlan:
    """What a run will spend, computed before it runs.

    ``epsilon_by_epoch[k]`` is ε after epoch k+1 (all epochs planned, budget ignored);
    ``max_steps`` is where training stops: all planned steps, or fewer when the ε budget would
    be exceeded by the next step. ``epsilon`` is ε at ``max_steps``.
    """

    private: bool
    noise_multiplier: float
    sample_rate: float
    steps_per_epoch: int
    planned_steps: int
    max_steps: int
    delta: float
    accountant: str
    epsilon_by_epoch: tuple[float, ...]
    epsilon: float

    @property
    def stops_early(self) -> bool:
        return self.max_steps < self.planned_steps

    def epsilon_at(self, steps: int) -> float:
        """ε after ``steps`` optimizer steps of this mechanism."""
        if not self.private:
            return math.inf
        # Epoch ends and the budget stop were computed when planning; only odd counts recompute.
        if steps == self.max_steps:
            return self.epsilon
        epoch, remainder = divmod(steps, self.steps_per_epoch)
        if remainder == 0 and 1 <= epoch <= len(self.epsilon_by_epoch):
            return self.epsilon_by_epoch[epoch - 1]
        return accounting.epsilon(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=steps,
            delta=self.delta,
            accountant=self.accountant,
        )

    def spent(self, epsilon: float) -> PrivacySpent:
        return PrivacySpent(epsilon=epsilon, delta=self.delta, accountant=self.accountant)

    @property
    def planned_epsilon(self) -> float:
        """ε of all planned epochs, budget ignored (∞ without noise)."""
        return self.epsilon_by_epoch[-1] if self.epsilon_by_epoch else math.inf

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (ε = ∞ stays a float); :meth:`from_dict` reads it back exactly."""
        values = dataclasses.asdict(self)
        values["epsilon_by_epoch"] = list(self.epsilon_by_epoch)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PrivacyPlan:
        return cls(**{**values, "epsilon_by_epoch": tuple(float(e) for e in values["epsilon_by_epoch"])})


def plan_privacy(config: TrainConfig, *, train_size: int) -> PrivacyPlan:
    """Calibrate σ if a target ε is given, then compute ε per epoch and the budget's step limit.

    Raises ConfigError for inputs no mechanism can satisfy (δ ≥ 1/N, an unreachable target ε).
    """
    config.check_against(train_size)
    privacy = config.privacy
    sample_rate = config.resolved_sample_rate(train_size)
    steps_per_epoch = config.steps_per_epoch(train_size)
    planned_steps = steps_per_epoch * config.epochs
    epoch_ends = [steps_per_epoch * (k + 1) for k in range(config.epochs)]

    if not privacy.is_private:
        return PrivacyPlan(
            private=False,
            noise_multiplier=0.0,
            sample_rate=sample_rate,
            steps_per_epoch=steps_per_epoch,
            planned_steps=planned_steps,
            max_steps=planned_steps,
            delta=privacy.delta,
            accountant=privacy.accountant,
            epsilon_by_epoch=tuple(math.inf for _ in epoch_ends),
            epsilon=math.inf,
        )

    if privacy.noise_multiplier is not None:
        noise_multiplier = float(privacy.noise_multiplier)
    else:
        assert privacy.target_epsilon is not None  # PrivacyConfig guarantees one of the two
        noise_multiplier = accounting.noise_multiplier_for(
            target_epsilon=privacy.target_epsilon,
            sample_rate=sample_rate,
            steps=planned_steps,
            delta=privacy.delta,
            accountant=privacy.accountant,
        )
    epsilon_by_epoch = tuple(
        accounting.epsilons(
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=epoch_ends,
            delta=privacy.delta,
            accountant=privacy.accountant,
        )
    )
    max_steps = planned_steps
    if privacy.epsilon_budget is not None and epsilon_by_epoch[-1] > privacy.epsilon_budget:
        max_steps = accounting.max_steps_within(
            epsilon_budget=privacy.epsilon_budget,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            delta=privacy.delta,
            accountant=privacy.accountant,
            upper=planned_steps,
        )
        if max_steps == 0:
            raise ConfigError(
                f"Expected epsilon_budget to allow at least one step, but got "
                f"epsilon_budget={privacy.epsilon_budget}: one step with noise_multiplier="
                f"{noise_multiplier:.3g} and sample_rate={sample_rate:.3g} already spends more "
                f"(δ = {privacy.delta:g}, {privacy.accountant.upper()} accountant)."
            )
    epsilon_final = (
        epsilon_by_epoch[-1]
        if max_steps == planned_steps
        else accounting.epsilon(
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=max_steps,
            delta=privacy.delta,
            accountant=privacy.accountant,
        )
    )
    return PrivacyPlan(
        private=True,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps_per_epoch=steps_per_epoch,
        planned_steps=planned_steps,
        max_steps=max_steps,
        delta=privacy.delta,
        accountant=privacy.accountant,
        epsilon_by_epoch=epsilon_by_epoch,
        epsilon=epsilon_final,
    )


def check_plan(plan: PrivacyPlan, config: TrainConfig, *, train_size: int) -> None:
    """Raise ConfigError unless ``plan`` describes ``config``'s mechanism on ``train_size`` examples.

    A plan computed ahead (a sweep plans every trial before starting it) must match the run it is
    given to, or the ε reported for that run would be wrong.
    """
    privacy = config.privacy
    expected = {
        "private": privacy.is_private,
        "sample_rate": config.resolved_sample_rate(train_size),
        "steps_per_epoch": config.steps_per_epoch(train_size),
        "planned_steps": config.steps_per_epoch(train_size) * config.epochs,
        "delta": privacy.delta,
        "accountant": privacy.accountant,
    }
    if privacy.is_private and privacy.noise_multiplier is not None:
        expected["noise_multiplier"] = float(privacy.noise_multiplier)
    wrong = {k: (getattr(plan, k), v) for k, v in expected.items() if getattr(plan, k) != v}
    if wrong or (privacy.epsilon_budget is not None and plan.epsilon > privacy.epsilon_budget):
        raise ConfigError(f"Expected the privacy plan to match the configuration, but got (plan, config) = {wrong}.")
