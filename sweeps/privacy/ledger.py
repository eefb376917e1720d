"""The sweep's privacy ledger: every run that touches the training data, recorded before it runs.

A sweep's privacy statement composes the runs that trained on the data. Reading them back from
MLflow misses some: a trial that diverged before logging a point, the trials of an interrupted
launcher when MLflow is unreachable on ``--resume``, the audit's extra training run. So the
sweep keeps its own record, a JSON-lines file in its folder (owner-only, like the rest of it),
appended and fsynced by the driver *before* a run is handed to a worker: a trial whose worker
dies, is retried, is pruned or diverges is in it all the same. Each run appears once (by key):
a retried or resumed trial replays its own checkpointed randomness, so it is the same mechanism
run once, not a second one (:mod:`dp_core.train` restores every generator, CUDA's too).

An entry is the DP mechanism that ran, not a result: σ, the sampling rate and the planned
number of steps (a run never takes more), plus its name and key to find it in MLflow. Seeds are
kept only when the space itself fixes them (they are public then), so the launcher can say which
trials shared a noise stream.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dp_core.privacy_plan import PrivacyPlan
from sweeps.planning.keys import released_params
from sweeps.privacy.mechanism import TrialMechanism
from sweeps.protocol import TrialSpec

__all__ = ["CONFIRMATION_ROLES", "LEDGER_FILE", "LedgerEntry", "PrivacyLedger"]

LEDGER_FILE = "privacy-ledger.jsonl"

# a sweep's trial; the audit's retraining with canaries; a confirmation stage's retraining and the chosen
# configurations' refit on train + validation (sweeps.results.confirm)
ROLES = ("trial", "audit", "confirmation", "refit")
#: The confirmation stage's roles (also its runs' ``dpsweep.stage`` tag): retrained after the search.
CONFIRMATION_ROLES = ("confirmation", "refit")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """One run on the training data: its DP mechanism, and where to find it."""

    key: str
    name: str
    role: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    public_seed: int | None = None  # only a seed the space file fixed (fixed.seed, a seed axis, seed:)
    # The flat configuration that ran, without its seed: what a confirmation stage retrains.
    train_config: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Expected role in {ROLES}, but got role={self.role!r}.")

    @classmethod
    def from_spec(cls, spec: TrialSpec, *, public_seed: bool, role: str = "trial") -> LedgerEntry:
        """From a central trial's spec: its plan is the mechanism that runs (σ, q, planned steps)."""
        plan = spec.plan
        if not isinstance(plan, PrivacyPlan):
            raise TypeError(f"the ledger records central trials, but {spec.name} is a {spec.kind} trial")
        seed = spec.train.get("seed") if public_seed else None
        return cls(
            key=spec.key,
            name=spec.name,
            role=role,
            noise_multiplier=plan.noise_multiplier if plan.private else 0.0,
            sample_rate=plan.sample_rate,
            steps=plan.planned_steps,
            public_seed=None if seed is None else int(seed),
            train_config=released_params(spec.train),
        )

    def mechanism(self) -> TrialMechanism:
        return TrialMechanism(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps)


class PrivacyLedger:
    """The ledger file of one sweep. Picklable (Tune saves the searcher that holds it)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._keys: set[str] | None = None  # keys already in the file

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_keys": None}  # re-read after a restore: the file may have grown

    def entries(self) -> list[LedgerEntry]:
        """Every run recorded, each once, in the order they were first recorded."""
        if not self.path.exists():
            return []
        seen: dict[str, LedgerEntry] = {}
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                entry = LedgerEntry(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                # Only the last line can be torn (a process killed mid-write), and its run had not
                # been handed out yet: the write precedes it.
                continue
            seen.setdefault(entry.key, entry)
        return list(seen.values())

    def mechanisms(self) -> list[TrialMechanism]:
        return [entry.mechanism() for entry in self.entries()]

    def record(self, entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
        """Append the entries not yet in the file, durably (fsync), before their runs start; return them."""
        if self._keys is None:
            self._keys = {entry.key for entry in self.entries()}
        new = [entry for entry in entries if entry.key not in self._keys]
        if not new:
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(descriptor, "a") as handle:
            handle.write("".join(json.dumps(dataclasses.asdict(entry)) + "\n" for entry in new))
            handle.flush()
            os.fsync(handle.fileno())
        self._keys.update(entry.key for entry in new)
        return new
