"""The confirmation stage's decisions (sweeps.results.confirm): nominees, fresh seeds, the choice per ε bound."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dp_core.config import TrainConfig
from dp_core.data import load_data
from dp_core.train import train
from sweeps.protocol import ConfirmationJob
from sweeps.results.confirm import (
    Candidate,
    ConfirmationRun,
    candidates,
    choose,
    confirmation_config,
    confirmation_jobs,
    refit,
    refit_config,
    refit_jobs,
)
from sweeps.results.frontier import ConfirmedConfig, Point
from sweeps.results.released_model import load_weights, save_weights
from sweeps.workers.confirmation import train_jobs


def _point(trial: str, epoch: int, epsilon: float, accuracy: float) -> Point:
    return Point(
        epsilon=epsilon, accuracy=accuracy, run_id=f"run_{trial}", trial=trial, epoch=epoch, params={"axis.lr": trial}
    )


def test_candidates_are_each_bounds_leading_trials_at_their_best_epoch() -> None:
    points = [
        _point("a", 1, 0.5, 0.70),
        _point("a", 2, 0.9, 0.80),
        _point("a", 3, 1.5, 0.85),
        _point("b", 1, 0.6, 0.75),
        _point("b", 2, 1.2, 0.90),
        _point("c", 1, 0.4, 0.60),
        _point("c", 2, 0.8, 0.65),
        _point("d", 1, math.inf, 0.99),  # non-private: never nominated for an ε bound
    ]
    nominated = candidates(points, [1.0, 2.0], top=2)
    # ε ≤ 1: a (epoch 2, 0.80) and b (epoch 1, 0.75); ε ≤ 2: b (epoch 2, 0.90) and a (epoch 3, 0.85).
    assert [(c.trial, c.epoch, c.bound) for c in nominated] == [
        ("a", 2, 1.0),
        ("b", 1, 1.0),
        ("b", 2, 2.0),
        ("a", 3, 2.0),
    ]
    assert nominated[0].val_accuracy == 0.80 and nominated[0].epsilon == 0.9
    assert candidates(points, [0.3], top=3) == []
    # One point leading two bounds is two candidates: each is confirmed spending its own bound.
    assert [(c.trial, c.bound) for c in candidates([_point("a", 1, 0.5, 0.7)], [1.0, 2.0], top=1)] == [
        ("a", 1.0),
        ("a", 2.0),
    ]


def test_a_candidate_is_confirmed_for_its_epochs_at_the_sigma_that_spends_its_bound() -> None:
    from sweeps.planning import plan_trial

    trial_config = {
        "dataset": "digits",
        "model": "mlp",
        "noise_multiplier": 3.0,
        "epochs": 20,
        "batch_size": 128,
        "validation_fraction": 0.1,
        "seed": 7,
    }
    searched = plan_trial(trial_config, name="t", axis_values={})
    nominated = Candidate(trial="t", epoch=6, epsilon=searched.plan.epsilon_by_epoch[5], val_accuracy=0.8, bound=3.0)
    config = confirmation_config(nominated, searched.train_config)
    assert "seed" not in config and config["epochs"] == 6 and config["target_epsilon"] == 3.0
    confirmed = plan_trial(config, name="c", axis_values={})
    # It spends the bound (to the calibration's tolerance), with less noise than the search point had.
    assert confirmed.planned_epsilon == pytest.approx(3.0, rel=0.01) and confirmed.planned_epsilon <= 3.0
    assert nominated.epsilon < 3.0 and confirmed.plan.noise_multiplier < 3.0


def test_choice_is_by_mean_validation_accuracy_and_never_reads_test() -> None:
    lucky = Candidate(trial="lucky", epoch=5, epsilon=0.9, val_accuracy=0.95, bound=1.0)
    steady = Candidate(trial="steady", epoch=5, epsilon=0.8, val_accuracy=0.90, bound=1.0)
    configs = {lucky.key: {"lr": 1.0}, steady.key: {"lr": 0.5}}

    def runs(test_of_lucky: float) -> list[ConfirmationRun]:
        made = []
        for i, (lv, sv) in enumerate([(0.80, 0.89), (0.84, 0.91), (0.82, 0.90)]):
            made.append(
                ConfirmationRun(
                    name=f"l{i}",
                    trial="lucky",
                    epoch=5,
                    bound=1.0,
                    seed_index=i,
                    epsilon=0.9,
                    val_accuracy=lv,
                    test_accuracy=test_of_lucky,
                )
            )
            made.append(
                ConfirmationRun(
                    name=f"s{i}",
                    trial="steady",
                    epoch=5,
                    bound=1.0,
                    seed_index=i,
                    epsilon=0.8,
                    val_accuracy=sv,
                    test_accuracy=0.88 + i / 100,
                )
            )
        return made

    chosen = choose([lucky, steady], runs(0.5), [1.0], configs)
    by_trial = {c.trial: c for c in chosen}
    assert by_trial["steady"].best_for == (1.0,) and by_trial["lucky"].best_for == ()
    assert by_trial["steady"].params == {"lr": 0.5} and by_trial["steady"].bound == 1.0
    assert by_trial["steady"].test_mean == pytest.approx(0.89) and by_trial["steady"].test_std == pytest.approx(0.01)
    assert by_trial["steady"].seeds == 3 and by_trial["steady"].search_val_accuracy == 0.90
    # Test accuracy that would favour the other configuration changes nothing chosen.
    again = {c.trial: c.best_for for c in choose([lucky, steady], runs(0.99), [1.0], configs)}
    assert again == {"lucky": (), "steady": (1.0,)}


def test_a_diverged_run_counts_against_its_configuration() -> None:
    candidate = Candidate(trial="t", epoch=1, epsilon=1.0, val_accuracy=0.9, bound=1.0)
    runs = [
        ConfirmationRun(
            name="a", trial="t", epoch=1, bound=1.0, seed_index=0, epsilon=1.0, val_accuracy=0.9, test_accuracy=0.9
        ),
        ConfirmationRun(
            name="b",
            trial="t",
            epoch=1,
            bound=1.0,
            seed_index=1,
            epsilon=math.nan,
            val_accuracy=math.nan,
            test_accuracy=math.nan,
        ),
    ]
    (confirmed,) = choose([candidate], runs, [1.0], {candidate.key: {}})
    assert (
        confirmed.seeds == 2
        and confirmed.val_mean == pytest.approx(0.45)
        and confirmed.test_mean == pytest.approx(0.45)
    )


def test_jobs_draw_fresh_seeds_from_the_secret_the_same_on_resume() -> None:
    config = {"dataset": "digits", "model": "mlp", "noise_multiplier": 1.0, "epochs": 2}
    chosen = [
        Candidate(trial="trial_0001", epoch=2, epsilon=1.0, val_accuracy=0.9, bound=1.0),
        Candidate(trial="trial_0001", epoch=2, epsilon=1.0, val_accuracy=0.9, bound=2.0),
    ]
    configs = {c.key: config for c in chosen}
    jobs = confirmation_jobs(chosen, configs, seeds=3, root_seed=12345)
    seeds = [job.train["seed"] for job in jobs]
    # Fresh for every run, the two bounds' runs of one point included.
    assert len(set(seeds)) == 6 and all(0 <= s < 2**62 for s in seeds)
    assert [job.name for job in jobs[:3]] == [f"confirm_trial_0001_epoch2_eps1_seed{i}" for i in (1, 2, 3)]
    assert seeds == [job.train["seed"] for job in confirmation_jobs(chosen, configs, seeds=3, root_seed=12345)]
    other_root = confirmation_jobs(chosen, configs, seeds=3, root_seed=54321)
    assert not set(seeds) & {job.train["seed"] for job in other_root}


@pytest.mark.slow  # six trainings: seconds on 2 cores
def test_train_jobs_stop_at_their_epoch_and_match_the_trainer() -> None:
    base = {
        "dataset": "digits",
        "model": "mlp",
        "noise_multiplier": 1.0,
        "epochs": 4,
        "batch_size": 128,
        "validation_fraction": 0.1,
        "device": "cpu",
    }
    jobs = [
        ConfirmationJob(
            name=f"j{i}", trial="t", epoch=epoch, bound=8.0, seed_index=i, train={**base, "lr": lr, "seed": 10 + i}
        )
        for i, (epoch, lr) in enumerate([(2, 1.0), (4, 2.0), (3, 0.5)])
    ]
    rows = train_jobs(jobs)  # vectorised together (same model, data and steps)
    for job, row in zip(jobs, rows, strict=True):
        config = TrainConfig.from_dict(job.train)
        alone = train(config, data=load_data(config.data)).reports[job.epoch - 1]
        assert row.name == job.name
        assert row.val_accuracy == pytest.approx(alone.val_accuracy, abs=1e-9)
        assert row.test_accuracy == pytest.approx(alone.test_accuracy, abs=1e-9)
        assert row.epsilon == pytest.approx(alone.epsilon)


def test_confirmation_and_refit_carry_parameter_averaging_and_report_the_averaged_model() -> None:
    params = {
        "dataset": "digits", "model": "mlp", "noise_multiplier": 1.0, "epochs": 2, "batch_size": 256,
        "validation_fraction": 0.1, "accountant": "rdp", "device": "cpu", "ema_decay": 0.9, "lr": 1.0,
    }  # fmt: skip
    candidate = Candidate(trial="t", epoch=2, epsilon=2.0, val_accuracy=0.9, bound=3.0)
    jobs = confirmation_jobs([candidate], {candidate.key: params}, seeds=2, root_seed=7)
    assert all(job.train["ema_decay"] == 0.9 for job in jobs)
    winner = _confirmed("t", best_for=(3.0,), params=params)
    assert refit_config(winner)["ema_decay"] == 0.9
    rows = train_jobs(jobs)  # two jobs of one model, data and steps: trained alone, as packs cannot average
    for job, row in zip(jobs, rows, strict=True):
        config = TrainConfig.from_dict(job.train)
        alone = train(config, data=load_data(config.data)).reports[job.epoch - 1]
        assert (row.val_accuracy, row.test_accuracy, row.test_accuracy_raw) == (
            alone.val_accuracy,
            alone.test_accuracy,
            alone.test_accuracy_raw,
        )
        assert alone.test_accuracy_raw is not None


def _confirmed(trial: str, *, best_for: tuple[float, ...], params: dict) -> ConfirmedConfig:
    return ConfirmedConfig(
        trial=trial,
        epoch=6,
        epsilon=2.99,
        bound=3.0,
        search_val_accuracy=0.9,
        val_mean=0.88,
        val_std=0.01,
        test_mean=0.87,
        test_std=0.02,
        seeds=3,
        run_ids=("c1", "c2", "c3"),
        params=params,
        best_for=best_for,
    )


def test_the_chosen_configuration_is_refit_on_train_and_validation_spending_the_same_bound(tmp_path: Path) -> None:
    from sweeps.driver.confirm_stage import refit_configs
    from sweeps.planning import plan_trial

    confirmed_config = plan_trial(
        {
            "dataset": "digits",
            "model": "mlp",
            "epochs": 6,
            "batch_size": 128,
            "validation_fraction": 0.2,
            "target_epsilon": 3.0,
        },
        name="c",
        axis_values={},
    )
    params = {k: v for k, v in confirmed_config.train_config.items() if k != "seed"}
    winner = _confirmed("t", best_for=(3.0,), params=params)
    config = refit_config(winner)
    assert config["validation_fraction"] == 0.0 and config["epochs"] == 6 and config["target_epsilon"] == 3.0
    ((key, calibrated),) = refit_configs([winner]).items()
    assert key == ("t", 6, 3.0) and calibrated["validation_fraction"] == 0.0
    refit_plan = plan_trial(calibrated, name="r", axis_values={})
    # The larger N samples each example less often (q = B/N), so the same bound takes less noise.
    assert refit_plan.planned_epsilon == pytest.approx(3.0, rel=0.01) and refit_plan.planned_epsilon <= 3.0
    assert refit_plan.plan.noise_multiplier < params["noise_multiplier"]

    jobs = refit_jobs([winner], {key: calibrated}, seeds=3, root_seed=99)
    assert [job.name for job in jobs] == [f"refit_t_epoch6_eps3_seed{i}" for i in (1, 2, 3)]
    candidate = Candidate(trial="t", epoch=6, epsilon=2.99, val_accuracy=0.9, bound=3.0)
    confirm_seeds = {
        job.train["seed"] for job in confirmation_jobs([candidate], {candidate.key: params}, seeds=3, root_seed=99)
    }
    refit_seeds = [job.train["seed"] for job in jobs]
    assert len(set(refit_seeds)) == 3 and not confirm_seeds & set(refit_seeds)
    assert refit_seeds == [job.train["seed"] for job in refit_jobs([winner], {key: calibrated}, seeds=3, root_seed=99)]

    # Trained: no validation split left to measure, the test split measured, the bound spent.
    rows = train_jobs(jobs[:2])
    runs = [
        ConfirmationRun(
            name=j.name,
            trial="t",
            epoch=6,
            bound=3.0,
            seed_index=j.seed_index,
            epsilon=r.epsilon,
            val_accuracy=r.val_accuracy,
            test_accuracy=r.test_accuracy,
            stage="refit",
        )
        for j, r in zip(jobs, rows)
    ]
    assert all(math.isnan(r.val_accuracy) and 0.5 < r.test_accuracy <= 1.0 and r.ok for r in runs)
    assert all(r.epsilon == pytest.approx(3.0, rel=0.01) and r.epsilon <= 3.0 + 1e-9 for r in runs)

    # The first refit run's model is the bound's, a rule fixed before any ran: only its job keeps it, and the
    # weights handed back, kept and built again score on the test split exactly what the run reported.
    assert [job.keep_model for job in jobs] == [True, False, False]
    assert rows[0].model is not None and rows[1].model is None
    images, labels = load_data(TrainConfig.from_dict(jobs[0].train).data).test.tensors
    (alone,) = train_jobs(jobs[:1])  # trained by train(), not vectorised
    for path, row in (("vectorised", rows[0]), ("alone", alone)):
        kept = tmp_path / f"{path}.pt"
        save_weights(kept, row.model, train=jobs[0].train, run_key="k")
        model = load_weights(kept).model
        with torch.no_grad():
            accuracy = (model(images).argmax(dim=1) == labels).float().mean().item()
        assert accuracy == pytest.approx(row.test_accuracy, abs=1e-6), path


def test_refit_reports_the_refit_runs_and_keeps_what_chose_the_configuration() -> None:
    winner, other = _confirmed("win", best_for=(3.0,), params={"lr": 1.0}), _confirmed("other", best_for=(), params={})
    key = ("win", 6, 3.0)
    runs = [
        ConfirmationRun(
            name=f"r{i}",
            trial="win",
            epoch=6,
            bound=3.0,
            seed_index=i,
            epsilon=2.995,
            val_accuracy=math.nan,
            test_accuracy=acc,
            run_id=f"r{i}",
            stage="refit",
        )
        for i, acc in enumerate([0.90, 0.92])
    ]
    runs.append(
        ConfirmationRun(
            name="r2",
            trial="win",
            epoch=6,
            bound=3.0,
            seed_index=2,
            epsilon=math.nan,
            val_accuracy=math.nan,
            test_accuracy=math.nan,
            stage="refit",
        )
    )  # diverged
    # A confirmation run (another stage) of the same key is not a refit run.
    runs.append(
        ConfirmationRun(
            name="c9", trial="win", epoch=6, bound=3.0, seed_index=9, epsilon=2.99, val_accuracy=0.5, test_accuracy=0.1
        )
    )
    refit_config_of_win = {"lr": 1.0, "validation_fraction": 0.0, "noise_multiplier": 2.0}
    reported = {c.trial: c for c in refit([winner, other], runs, {key: refit_config_of_win})}
    win = reported["win"]
    assert win.trained_on == "train+validation" and win.params == refit_config_of_win
    assert win.seeds == 3 and win.test_mean == pytest.approx((0.90 + 0.92 + 0.0) / 3) and win.epsilon == 2.995
    assert (win.val_mean, win.val_std, win.best_for, win.search_val_accuracy) == (0.88, 0.01, (3.0,), 0.9)
    assert win.run_ids == ("c1", "c2", "c3", "r0", "r1")
    assert reported["other"] == other  # not chosen: not refit
    # Without refit runs (refit: false, or none finished) the confirmation's figures stand.
    assert refit([winner], [], {key: refit_config_of_win}) == [winner]


def test_the_trainers_defaults_are_a_candidate_where_they_are_a_point_of_the_space() -> None:
    from sweeps.results.confirm import BASELINE, baseline_candidates, baseline_config
    from sweeps.space.model import Range

    fixed = {"dataset": "digits", "model": "mlp", "epochs": 12, "delta": 1e-5}
    axes = {
        "target_epsilon": Range(low=0.5, high=8.0, log=True),
        "max_grad_norm": Range(low=0.25, high=4.0),
        "lr": (1.0, 2.0, 3.0),
        "batch_size": Range(low=64, high=512, integer=True),
    }
    defaults = TrainConfig.from_dict({})
    values, why = baseline_config(fixed, axes)
    # Every searched key at the trainer's default; σ and the target ε are the bound's to set.
    assert (
        values
        == {
            "max_grad_norm": defaults.privacy.max_grad_norm,
            "lr": defaults.optimizer.lr,
            "batch_size": defaults.batch_size,
        }
        and why == ""
    )
    assert baseline_config(fixed, {**axes, "lr": (0.1, 0.5)}) == (None, "the default lr = 2.0 is not on its axis")
    missing, why = baseline_config(fixed, {**axes, "max_grad_norm": Range(low=1.0, high=4.0)})
    assert missing is None and "max_grad_norm = 0.5" in why
    baseline = baseline_candidates([1.0, 3.0], epochs=12)
    assert [(c.trial, c.epoch, c.bound) for c in baseline] == [(BASELINE, 12, 1.0), (BASELINE, 12, 3.0)]
    # Confirmed like a nominee: spending its bound, chosen only on mean validation accuracy.
    config = confirmation_config(baseline[1], {**fixed, **values, "validation_fraction": 0.1})
    assert config["target_epsilon"] == 3.0 and config["noise_multiplier"] is None and config["lr"] == 2.0
    nominee = Candidate(trial="trial_0003", epoch=5, epsilon=2.5, val_accuracy=0.93, bound=3.0)
    runs = [
        ConfirmationRun(
            name=f"{c.trial}{i}",
            trial=c.trial,
            epoch=c.epoch,
            bound=3.0,
            seed_index=i,
            epsilon=2.99,
            val_accuracy=v,
            test_accuracy=0.5,
        )
        for c, vals in ((nominee, (0.90, 0.91)), (baseline[1], (0.92, 0.93)))
        for i, v in enumerate(vals)
    ]
    chosen = {
        c.trial: c.best_for for c in choose([nominee, baseline[1]], runs, [3.0], {nominee.key: {}, baseline[1].key: {}})
    }
    assert chosen == {"trial_0003": (), BASELINE: (3.0,)}
