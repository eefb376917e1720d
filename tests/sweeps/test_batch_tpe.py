"""BatchTPESampler: TPE itself outside a batch and in a batch of one; one model per batch."""

from __future__ import annotations

import math
import random

import optuna
import pytest

from sweeps.batch_tpe import BatchTPESampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _ask(study: optuna.Study) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_float("lr", 0.01, 10.0, log=True)
    trial.suggest_float("max_grad_norm", 0.1, 10.0, log=True)
    return trial


def _score(trial: optuna.Trial) -> float:
    """Best near lr = 0.1, C = 1 (log scale): what TPE should learn."""
    return -(math.log10(trial.params["lr"]) + 1) ** 2 - math.log10(trial.params["max_grad_norm"]) ** 2


def _history(study: optuna.Study, count: int, *, seed: int = 0) -> None:
    """``count`` told trials, a fifth of them pruned with an intermediate value (as a sweep's are)."""
    rng = random.Random(seed)
    for _ in range(count):
        trial = _ask(study)
        if rng.random() < 0.2:
            trial.report(_score(trial) - 1, 3)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, _score(trial))


@pytest.mark.parametrize("multivariate", [True, False])
def test_a_batch_of_one_suggests_what_tpe_does(multivariate: bool) -> None:
    tpe = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=3, multivariate=multivariate))
    batched = optuna.create_study(direction="maximize", sampler=BatchTPESampler(seed=3, multivariate=multivariate))
    _history(tpe, 40)
    _history(batched, 40)
    for _ in range(15):
        expected = _ask(tpe)
        with batched.sampler.one_fit():
            got = _ask(batched)
        assert got.params == expected.params
        tpe.tell(expected, _score(expected))
        batched.tell(got, _score(got))


def test_outside_a_batch_it_is_tpe() -> None:
    tpe = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=5))
    batched = optuna.create_study(direction="maximize", sampler=BatchTPESampler(seed=5))
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
