"""What a sweep's privacy statement says: its ε values for MLflow, the frontier plot and the console."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

from sweeps.privacy.mechanism import ACCOUNTANT

__all__ = ["SelectionPrivacy", "shared_seed_note"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelectionPrivacy:
    """What releasing the model a sweep selects costs, each ε from the RDP accountant at ``delta``.

    ``sweep_epsilon``: Papernot–Steinke's bound for releasing the best of a random number of
    runs (None when the sweep ran a fixed set of trials: then no bound below naive composition is
    known). ``naive_composition_epsilon``: RDP composition over the ``trials_run`` runs, a bound
    for releasing all of them. ``largest_trial_epsilon``: the largest ε of one configuration alone,
    over the ``configurations`` (distinct (σ, q, steps) mechanisms) the sweep could run, which is
    *not* a bound for the selection.
    """

    sweep_epsilon: float | None
    naive_composition_epsilon: float
    largest_trial_epsilon: float
    trials_run: int
    configurations: int
    distribution: str | None
    mean: float | None
    eta: float | None
    delta: float
    accountant: str = ACCOUNTANT
    adaptive: bool = False  # Optuna chose the trials from earlier results (sweeps.privacy.adaptive)
    filter_description: str | None = None  # the sweep's RDP filter, whose ε is filter_epsilon
    filter_epsilon: float | None = None
    audit_runs: int = 0  # of trials_run, the audit's retraining with canaries (--audit)
    confirmation_runs: int = 0  # of trials_run, the confirmation stage's retraining with fresh seeds and refits

    def metrics(self) -> dict[str, float]:
        """For the parent run: ``sweep_epsilon`` (with private selection), ``naive_composition_epsilon``, …

        With private selection the trial count stays out: knowing K turns the random count back
        into a fixed one, and the sweep ε no longer holds.
        """
        values = {
            "naive_composition_epsilon": self.naive_composition_epsilon,
            "largest_trial_epsilon_rdp": self.largest_trial_epsilon,
        }
        if self.sweep_epsilon is not None:
            values["sweep_epsilon"] = self.sweep_epsilon
        else:
            values["trials_run"] = float(self.trials_run)
        if self.filter_epsilon is not None:
            values["sweep_filter_epsilon"] = self.filter_epsilon
        return values

    def plot_lines(self) -> dict[str, float]:
        """Labelled sweep-level ε values for the frontier plot (finite values only; no trial count)."""
        lines = {}
        if self.sweep_epsilon is not None:
            lines["sweep ε (best of K random trials, RDP)"] = self.sweep_epsilon
        if self.filter_epsilon is not None:
            lines["sweep ε (RDP filter, adaptive)"] = self.filter_epsilon
        name = "RDP sum of the trials run (odometer)" if self.adaptive else "naive composition of the trials (RDP)"
        lines[name] = self.naive_composition_epsilon
        return {label: value for label, value in lines.items() if math.isfinite(value)}

    def summary(self) -> str:
        """Console lines: each ε with its accountant and δ (with private selection, without K)."""
        tag = f"(δ = {self.delta:g}, {self.accountant.upper()} accountant)"
        runs = f"{self.trials_run} trial{'' if self.trials_run == 1 else 's'}"
        largest = (
            f"  largest ε of one configuration alone: ε = {_fmt(self.largest_trial_epsilon)} {tag}; "
            "not a bound for the selected model"
        )
        head = "Privacy of releasing the selected model (the search included):"
        extra = [
            f"the confirmation stage's {self.confirmation_runs} runs" if self.confirmation_runs else "",
            "the audit's retraining" if self.audit_runs else "",
        ]
        among = f" ({' and '.join(e for e in extra if e)} among them)" if any(extra) else ""
        if self.adaptive:
            reading = (
                f"  RDP sum over the {runs} run{among}: ε = {_fmt(self.naive_composition_epsilon)} {tag}; an odometer "
                "reading, not a bound: Optuna chose each trial from earlier results"
            )
            if self.filter_epsilon is not None:
                bound = (
                    f"  sweep ε = {_fmt(self.filter_epsilon)} {tag}: releasing every trial, whatever Optuna chose "
                    f"({self.filter_description}; trials that did not fit were skipped)"
                )
                return "\n".join([head, bound, reading, largest])
            note = (
                "  No bound fixed in advance covers these adaptively chosen trials: set sweep_epsilon_budget in the "
                "space for an RDP filter whose ε holds for the whole sweep (sweeps.privacy.adaptive)."
            )
            return "\n".join([head, reading, largest, note])
        naive = (
            f"  naive composition over the {runs} run{among}: ε = {_fmt(self.naive_composition_epsilon)} "
            f"{tag}; covers releasing every trial"
        )
        if self.sweep_epsilon is None:
            note = (
                "  The selected model's own ε does not bound what the sweep leaks: which trial wins depends on "
                "the data of every trial. With a fixed set of trials, naive composition is the bound; add "
                "private_selection: {distribution: poisson, mean: ...} to the space for Papernot–Steinke's, "
                "which grows with log E[K] rather than with K."
            )
            return "\n".join([head, naive, largest, note])
        naive = (
            f"  naive composition over the trials run (K and the audit, if any; their count is not shown): "
            f"ε = {_fmt(self.naive_composition_epsilon)} {tag}; covers releasing every trial"
        )
        shape = "" if self.eta is None else f", η = {self.eta:g}"
        selected = (
            f"  sweep ε = {_fmt(self.sweep_epsilon)} {tag}: releasing the best of K trials with its "
            f"hyperparameters (not its seed, not K), K ~ {self.distribution} (mean {self.mean:g}{shape}), "
            f"each run a uniform draw among the admitted grid points ({self.configurations} distinct DP "
            "mechanisms; Papernot & Steinke 2022)"
        )
        note = (
            "  The sweep ε covers that one model only (release/selected_model.json): K, the other trials and the "
            "frontier (for the team, in MLflow) are covered by naive composition, which charges the trials that "
            "ran rather than the worst one each time."
        )
        return "\n".join([head, selected, naive, largest, note])


def _fmt(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.3f}"


def shared_seed_note(entries: Iterable[Any]) -> str | None:
    """A line for the privacy summary when runs among the ledger's ``entries`` trained with the
    same seed (``fixed.seed``, or a seed axis with other axes beside it), else None.

    Runs that share a seed share their noise stream and Poisson masks: they are not the
    independent mechanisms that any composition of the trials is about. Only seeds the space
    itself fixes are in the ledger; the secret ones are distinct by construction.
    """
    seeds = [entry.public_seed for entry in entries if entry.role == "trial" and entry.public_seed is not None]
    distinct = len(set(seeds))
    if distinct == len(seeds):
        return None
    return (
        f"  {len(seeds)} trials trained with {distinct} distinct seed{'' if distinct == 1 else 's'}: trials "
        "that share a seed share one noise stream, so they are not independent mechanisms and no composition "
        "above bounds releasing them together. Without fixed.seed or a seed axis each trial draws its own seed."
    )
