"""Optuna's TPE, fitted once per batch of suggestions instead of once per suggestion.

A pack asks Optuna for dozens of configurations at once. TPESampler refits its two Parzen
estimators (the good trials' density l(x) and the others' g(x)) for every suggestion, from
every trial of the study, in Python loops over the trials: in a study of thousands of trials that
costs more per pack than a digits pack takes to train (``bench/tpe_scaling.py``, figures in
``docs/benchmarks.md``). The asker actor fell behind, and free slots waited for it.

Inside :meth:`BatchTPESampler.one_fit`, the estimators are built at the batch's first
suggestion and reused by the next ones; each suggestion still runs TPESampler's own sampling
(it draws its own ``n_ei_candidates`` from l(x) and keeps the one with the best l(x)/g(x)), so
the configurations of a batch are independent draws from one TPE model. What a batch gives up
is the constant liar between its own members (each asked configuration counting as a bad
result for the next), which Optuna uses to spread parallel asks apart; draws from l(x), a
mixture over the best trials, are spread already, and the trials running from earlier batches
still count as the liar's. Outside ``one_fit`` it is TPESampler, unchanged.

The seam into Optuna's internals is one step of TPESampler, ``_sample`` (fit, then draw):
inside a batch, its first call for a search space is Optuna's own, and the two estimators it
builds are kept (from ``_build_parzen_estimator``); the later calls skip the fit and draw from
them with TPESampler's own ``_compute_acquisition_func`` and ``_compare``, its ``_rng`` and its
``n_ei_candidates``. Caching the estimators alone and letting Optuna's ``_sample`` run for every
suggestion was measured too, and saved less CPU per suggestion than this (``docs/benchmarks.md``):
the split of the trials into good and bad, which ``_sample`` redoes per suggestion, costs more
than the estimators.

It is tested on the Optuna versions in :data:`TESTED_OPTUNA` (pinned likewise in
``pyproject.toml``): a batch of one suggests exactly what TPESampler does (plain and conditional
spaces, with and without the constant liar), and so does a whole batch without the constant liar,
whose model no running trial changes, so a change of Optuna's internals fails a test rather than
silently changing the search. On another version the sampler warns and ``one_fit`` does nothing:
TPESampler itself, without the speed-up.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from packaging.version import Version

__all__ = ["BatchTPESampler", "TESTED_OPTUNA"]

#: Optuna versions (lowest included, highest excluded) on which tests/sweeps/driver/test_batch_tpe.py
#: passed: their TPESampler._sample fits l(x) and g(x) with ``_build_parzen_estimator(study,
#: search_space, trials, handle_below)`` and then draws as :meth:`BatchTPESampler._sample` does.
TESTED_OPTUNA = ("5.0", "5.2")


def _tested(version: str) -> bool:
    low, high = TESTED_OPTUNA
    return Version(low) <= Version(Version(version).base_version) < Version(high)


class BatchTPESampler(optuna.samplers.TPESampler):
    """TPESampler whose suggestions inside :meth:`one_fit` share one fit of the estimators.

    Takes TPESampler's keyword arguments.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._batching = _tested(optuna.__version__)
        if not self._batching:
            low, high = TESTED_OPTUNA
            warnings.warn(
                f"BatchTPESampler is tested on optuna>={low},<{high}, but got optuna {optuna.__version__}: "
                "it falls back to TPESampler's one fit per suggestion (same search, slower asks). "
                "Run tests/sweeps/driver/test_batch_tpe.py on this version before widening TESTED_OPTUNA.",
                RuntimeWarning,
                stacklevel=2,
            )
        # (handle_below, search space) -> the estimator built at the batch's first suggestion
        self._fits: dict[tuple[bool, tuple[tuple[str, BaseDistribution], ...]], Any] | None = None

    @contextlib.contextmanager
    def one_fit(self) -> Iterator[None]:
        """Suggestions asked inside share one fit per search space (see the module docstring)."""
        self._fits = {} if self._batching else None
        try:
            yield
        finally:
            self._fits = None

    def _build_parzen_estimator(
        self,
        study: optuna.Study,
        search_space: dict[str, BaseDistribution],
        trials: list[optuna.trial.FrozenTrial],
        handle_below: bool,
    ) -> Any:
        estimator = super()._build_parzen_estimator(study, search_space, trials, handle_below)
        if self._fits is not None:
            # Kept per set of parameters: a conditional space asks different sets, each its own fit.
            self._fits[(handle_below, tuple(search_space.items()))] = estimator
        return estimator

    def _sample(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        items = tuple(search_space.items())
        below = self._fits.get((True, items)) if self._fits is not None else None
        above = self._fits.get((False, items)) if self._fits is not None else None
        if below is None or above is None:
            return super()._sample(study, trial, search_space)  # fits, through _build_parzen_estimator
        # TPESampler._sample's draw, from the batch's fit: n_ei_candidates from l(x), the best l(x)/g(x).
        samples = below.sample(self._rng.rng, self._n_ei_candidates)
        best = self._compare(samples, self._compute_acquisition_func(samples, below, above))
        return {name: distribution.to_external_repr(best[name]) for name, distribution in search_space.items()}
