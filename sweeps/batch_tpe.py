"""Optuna's TPE, fitted once per batch of suggestions instead of once per suggestion.

A pack asks Optuna for dozens of configurations at once. TPESampler refits its two Parzen
estimators (the good trials' density l(x) and the others' g(x)) for every suggestion, from
every trial of the study, in Python loops over the trials: about 25 ms per suggestion at 4,000
trials on one core (``bench/tpe_scaling.py``), 1 s for one digits pack, while the pack itself
trains for about 6 s on one of the two cores. The asker actor fell behind, and free slots
waited for it.

Inside :meth:`BatchTPESampler.one_fit`, the estimators are fitted at the batch's first
suggestion and each further suggestion draws its own ``n_ei_candidates`` from l(x) and keeps
the one with the best l(x)/g(x), as TPE does: the configurations of a batch are independent
draws from one TPE model. What a batch gives up is the constant liar between its own members
(each asked configuration counting as a bad result for the next), which Optuna uses to spread
parallel asks apart; draws from l(x), a mixture over the best trials, are spread already, and
the trials running from earlier batches still count as the liar's. Outside ``one_fit`` it is
TPESampler, unchanged.

It overrides TPESampler's ``_sample`` with the same steps (Optuna 5's): a test asserts that a
batch of one suggests exactly what TPESampler does, so a change of Optuna's internals fails
there rather than silently changing the search.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.samplers._tpe.sampler import _split_trials, default_gamma, default_gamma_multiobjective
from optuna.trial import TrialState

__all__ = ["BatchTPESampler"]


class BatchTPESampler(optuna.samplers.TPESampler):
    """TPESampler whose suggestions inside :meth:`one_fit` share one fit of the estimators."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fits: dict[tuple[str, ...], tuple[Any, Any]] | None = None  # parameters -> (l, g), in a batch

    @contextlib.contextmanager
    def one_fit(self) -> Iterator[None]:
        """Suggestions asked inside share one fit per set of parameters (see the module docstring)."""
        self._fits = {}
        try:
            yield
        finally:
            self._fits = None

    def _sample(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                search_space: dict[str, Any]) -> dict[str, Any]:
        if self._fits is None:
            return super()._sample(study, trial, search_space)
        key = tuple(sorted(search_space))
        if key not in self._fits:
            self._fits[key] = self._fit(study, trial, search_space)
        below, above = self._fits[key]
        samples = below.sample(self._rng.rng, self._n_ei_candidates)
        best = self._compare(samples, self._compute_acquisition_func(samples, below, above))
        return {name: distribution.to_external_repr(best[name]) for name, distribution in search_space.items()}

    def _fit(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict[str, Any]) -> tuple[Any, Any]:
        """TPESampler._sample's split of the trials and its two estimators, as Optuna 5 builds them."""
        states = [TrialState.COMPLETE, TrialState.PRUNED] + ([TrialState.RUNNING] if self._constant_liar else [])
        trials = study._get_trials(deepcopy=False, states=states, use_cache=not self._constant_liar)
        if self._constant_liar:
            trials = [t for t in trials if t.number != trial.number]
        if self._gamma is None:
            self._gamma = default_gamma if len(study.directions) <= 1 else default_gamma_multiobjective
        finished = sum(t.state != TrialState.RUNNING for t in trials)  # running trials do not count
        below_trials, above_trials = _split_trials(study, trials, self._gamma(finished))
        return (self._build_parzen_estimator(study, search_space, below_trials, handle_below=True),
                self._build_parzen_estimator(study, search_space, above_trials, handle_below=False))
