"""BatchTPESampler: TPE itself outside a batch and in a batch of one; one model per batch."""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import pytest

from sweeps.driver.batch_tpe import BatchTPESampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _ask(study: optuna.Study) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_float("lr", 0.01, 10.0, log=True)
    trial.suggest_float("max_grad_norm", 0.1, 10.0, log=True)
    return trial


def _ask_conditional(study: optuna.Study) -> optuna.Trial:
    """A conditional space: which parameters a trial has depends on its optimizer."""
    trial = study.ask()
    trial.suggest_float("lr", 0.01, 10.0, log=True)
    if trial.suggest_categorical("optimizer", ["sgd", "adam"]) == "sgd":
        trial.suggest_float("momentum", 0.0, 0.95)
    else:
        trial.suggest_int("warmup_epochs", 0, 5)
    return trial


def _score(trial: optuna.Trial) -> float:
    """Best near lr = 0.1, C = 1 (log scale): what TPE should learn."""
    params = trial.params
    score = -((math.log10(params["lr"]) + 1) ** 2)
    if "max_grad_norm" in params:
        score -= math.log10(params["max_grad_norm"]) ** 2
    return score + 0.3 * params.get("momentum", 0.0) - 0.05 * params.get("warmup_epochs", 0)


def _history(
    study: optuna.Study,
    count: int,
    ask: Callable[[optuna.Study], optuna.Trial] = _ask,
    *,
    seed: int = 0,
    running: int = 0,
) -> None:
    """``count`` told trials, a fifth of them pruned with an intermediate value (as a sweep's are),
    then ``running`` asked and not told (what the constant liar counts as bad)."""
    rng = random.Random(seed)
    for _ in range(count):
        trial = ask(study)
        if rng.random() < 0.2:
            trial.report(_score(trial) - 1, 3)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, _score(trial))
    for _ in range(running):
        ask(study)


def _studies(seed: int, **options: Any) -> tuple[optuna.Study, optuna.Study]:
    """Optuna's TPESampler and BatchTPESampler, same options and seed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group=True
        return (
            optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, **options)),
            optuna.create_study(direction="maximize", sampler=BatchTPESampler(seed=seed, **options)),
        )


SAMPLERS = [
    pytest.param({"multivariate": False}, id="independent"),
    pytest.param({"multivariate": True}, id="multivariate"),
    pytest.param({"multivariate": True, "group": True}, id="multivariate-group"),
]
SPACES = [pytest.param(_ask, id="plain"), pytest.param(_ask_conditional, id="conditional")]


@pytest.mark.parametrize("constant_liar", [True, False], ids=["liar", "no-liar"])
@pytest.mark.parametrize("ask", SPACES)
@pytest.mark.parametrize("options", SAMPLERS)
def test_a_batch_of_one_suggests_what_tpe_does(options: dict, ask: Callable, constant_liar: bool) -> None:
    tpe, batched = _studies(3, constant_liar=constant_liar, **options)
    for study in (tpe, batched):
        _history(study, 40, ask, running=6)  # running trials: the liar's
    for _ in range(15):
        expected = ask(tpe)
        with batched.sampler.one_fit():
            got = ask(batched)
        assert got.params == expected.params
        tpe.tell(expected, _score(expected))
        batched.tell(got, _score(got))


@pytest.mark.parametrize("ask", SPACES)
@pytest.mark.parametrize("options", SAMPLERS)
def test_without_the_constant_liar_a_whole_batch_suggests_what_tpe_does(options: dict, ask: Callable) -> None:
    # No running trial enters TPE's model without the liar, so its model is the same for every
    # suggestion of a batch: one fit per batch then changes nothing, and the batch's later
    # suggestions (drawn from the kept fit, not by Optuna's _sample) must be TPE's exactly.
    tpe, batched = _studies(7, constant_liar=False, **options)
    for study in (tpe, batched):
        _history(study, 40, ask)
    for _ in range(3):
        expected = [ask(tpe) for _ in range(12)]
        with batched.sampler.one_fit():
            got = [ask(batched) for _ in range(12)]
        assert [t.params for t in got] == [t.params for t in expected]
        for study, trials in ((tpe, expected), (batched, got)):
            for trial in trials:
                study.tell(trial, _score(trial))


class _CountingFits(BatchTPESampler):
    """BatchTPESampler that counts the estimators it builds (the fits a batch saves)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.built = 0

    def _build_parzen_estimator(self, *args: Any, **kwargs: Any) -> Any:
        self.built += 1
        return super()._build_parzen_estimator(*args, **kwargs)


@pytest.mark.parametrize("ask, fits", [(_ask, 2), (_ask_conditional, 6)], ids=["plain", "conditional"])
def test_a_batch_fits_once_per_set_of_parameters(ask: Callable, fits: int) -> None:
    # The speed-up is real only if Optuna still builds its estimators where the cache sits.
    # Plain: l(x) and g(x) once. Conditional (multivariate, no group): lr and optimizer jointly,
    # then momentum and warmup_epochs each independently: three pairs.
    sampler = _CountingFits(seed=0, multivariate=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    _history(study, 40, ask)
    sampler.built = 0
    with sampler.one_fit():
        for _ in range(20):
            ask(study)
    assert sampler.built == fits
    sampler.built = 0
    ask(study)  # outside a batch: TPE's own fit per suggestion
    assert sampler.built >= 2


def test_outside_a_batch_it_is_tpe() -> None:
    tpe, batched = _studies(5)
    for study in (tpe, batched):
        _history(study, 30)
    assert [_ask(batched).params for _ in range(5)] == [_ask(tpe).params for _ in range(5)]


def test_a_batch_draws_distinct_configurations_from_the_learned_model() -> None:
    study = optuna.create_study(direction="maximize", sampler=BatchTPESampler(seed=0))
    _history(study, 80)
    with study.sampler.one_fit():
        batch = [_ask(study) for _ in range(40)]
    lrs = [trial.params["lr"] for trial in batch]
    assert len(set(lrs)) == len(lrs), "each suggestion draws its own candidates"
    # Uniform in log lr over [0.01, 10] puts 2/3 of the draws more than half a decade from the
    # best lr (0.1); draws from TPE's model of the good trials are mostly near it.
    near = sum(abs(math.log10(lr) + 1) < 0.5 for lr in lrs)
    assert near >= 30, f"{near} of 40 suggestions within half a decade of the best lr"
    # The batch is over: the next suggestion refits (it sees the batch's trials, running).
    with study.sampler.one_fit():
        after = _ask(study)
    assert after.params["lr"] not in lrs


def test_on_an_untested_optuna_it_warns_and_is_tpe_even_in_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optuna, "__version__", "5.2.0")
    tpe = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=11))
    with pytest.warns(RuntimeWarning, match=r"tested on optuna>=5\.0,<5\.2, but got optuna 5\.2\.0"):
        sampler = BatchTPESampler(seed=11)
    batched = optuna.create_study(direction="maximize", sampler=sampler)
    for study in (tpe, batched):
        _history(study, 30)
    expected = [_ask(tpe).params for _ in range(8)]
    with sampler.one_fit():  # the constant liar spreads these as TPE does: no shared fit
        assert [_ask(batched).params for _ in range(8)] == expected
