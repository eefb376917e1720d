"""Where a sweep's time went: :class:`SweepStats`, filled by the tracking callback, read by the launcher's summary."""

from __future__ import annotations

import dataclasses
import time

__all__ = ["SweepStats"]


@dataclasses.dataclass
class SweepStats:
    """Where a sweep's time went, summed over trials as results arrive in the driver."""

    started: float = dataclasses.field(default_factory=time.monotonic)
    train_seconds: float = 0.0  # inside training epochs (worker)
    eval_seconds: float = 0.0  # evaluating on the test set (worker)
    setup_seconds: float = 0.0  # trial start to first epoch: imports, data, model, σ (worker)
    report_seconds: float = 0.0  # between epochs: checkpoints, ε lookup, reporting (worker)
    logging_seconds: float = 0.0  # MLflow writes (driver, a background thread)
    trials_finished: int = 0
    epochs: int = 0

    ended: float | None = None  # when the trials were over and their logging done (run_trials' end)

    def wall_seconds(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def split(self, *, slots: float) -> dict[str, float]:
        """Shares of the slots' time (wall time x concurrent trial slots) and the raw seconds."""
        wall = self.wall_seconds()
        slot_seconds = max(wall * slots, 1e-9)
        busy = self.train_seconds + self.eval_seconds + self.setup_seconds + self.report_seconds
        return {
            "wall_seconds": wall,
            "slots": slots,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "setup_seconds": self.setup_seconds,
            "report_seconds": self.report_seconds,
            "logging_seconds": self.logging_seconds,
            "train_share": self.train_seconds / slot_seconds,
            "eval_share": self.eval_seconds / slot_seconds,
            "setup_share": self.setup_seconds / slot_seconds,
            "report_share": self.report_seconds / slot_seconds,
            "idle_share": max(0.0, 1 - busy / slot_seconds),
            "trial_epochs_per_second": self.epochs / max(wall, 1e-9),
        }
