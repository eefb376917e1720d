"""Pruning for a frontier: successive halving among trials of similar privacy cost.

Plain ASHA compares every trial at the same epoch, so it stops the high-noise trials first:
they are always behind in accuracy, yet they are exactly the ones that make the low-ε end of
the accuracy-vs-ε frontier. Here a trial competes only with trials whose planned ε falls in
the same band (half an octave of ε wide), so pruning removes the runs that are behind *at
their privacy cost*. Pure bookkeeping; the Ray Tune adapter lives in ``sweeps.driver.runner``.

A pruning rule is a class made with ``(grace_period=, max_epochs=)`` that answers
``rung_epochs()`` and ``judge(rows)``; a space selects one by its name in
:data:`sweeps.space.model.PRUNERS` (``asha``: :class:`BandedSuccessiveHalving`, ``none``: :class:`NoPruning`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["BandedSuccessiveHalving", "NoPruning", "epsilon_band"]


def epsilon_band(planned_epsilon: float) -> int:
    """Half-octave bands of ε: 1.0-1.41 is one band, 1.41-2.0 the next; ∞ is its own band."""
    if not math.isfinite(planned_epsilon) or planned_epsilon <= 0:
        return 10**6
    return math.floor(2 * math.log2(planned_epsilon))


class BandedSuccessiveHalving:
    """Asynchronous successive halving (Li et al. 2020, "A System for Massively Parallel
    Hyperparameter Tuning") run separately within each ε band.

    Rungs sit at epochs ``grace_period * reduction_factor**k``. The first time a trial reaches a
    rung its accuracy is recorded there; if it is below the ``1 - 1/reduction_factor`` quantile
    of the accuracies recorded at that rung by trials of the same band, the trial is stopped.
    """

    def __init__(self, *, grace_period: int, max_epochs: int, reduction_factor: float = 3.0) -> None:
        self.rungs: list[int] = []
        epoch = grace_period
        while epoch < max_epochs:
            self.rungs.append(int(epoch))
            epoch *= reduction_factor
        self.reduction_factor = reduction_factor
        self._recorded: dict[tuple[int, int], dict[str, float]] = {}
        self._stopped: set[str] = set()

    def should_stop(self, *, trial_id: str, band: int, epoch: int, accuracy: float) -> bool:
        """Whether this trial stops after this epoch. A trial once stopped stays stopped, so a
        retried run (its worker died) is stopped where the first attempt was."""
        if trial_id in self._stopped:
            return True
        for rung in reversed(self.rungs):
            if epoch < rung:
                continue
            recorded = self._recorded.setdefault((band, rung), {})
            if trial_id in recorded:
                return False  # judged at this rung already
            cutoff = (
                np.nanpercentile(list(recorded.values()), (1 - 1 / self.reduction_factor) * 100) if recorded else None
            )
            recorded[trial_id] = accuracy
            if cutoff is not None and accuracy < cutoff:
                self._stopped.add(trial_id)
                return True
            return False
        return False

    def rung_epochs(self) -> list[int]:
        """The epochs at which ``should_stop`` may stop a trial (it never does at others)."""
        return list(self.rungs)

    def judge(self, rows: list[tuple[str, int, int, float]]) -> list[str]:
        """``should_stop`` for many (trial_id, band, epoch, accuracy) at once; the ids to stop.

        One call per epoch of a pack (its members' rows), so a remote board costs one round trip.
        """
        return [
            trial_id
            for trial_id, band, epoch, accuracy in rows
            if self.should_stop(trial_id=trial_id, band=band, epoch=epoch, accuracy=accuracy)
        ]


class NoPruning:
    """Every trial runs all its epochs: no rungs, so the sweep starts no pruning board."""

    def __init__(self, *, grace_period: int, max_epochs: int) -> None:
        del grace_period, max_epochs  # the rule's constructor is every pruner's

    def rung_epochs(self) -> list[int]:
        return []

    def judge(self, rows: list[tuple[str, int, int, float]]) -> list[str]:
        return []
