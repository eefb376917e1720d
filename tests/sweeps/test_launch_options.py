"""The launcher's numeric options are checked before anything starts (no Ray, no MLflow, no folder)."""

from __future__ import annotations

import argparse

import pytest

from sweeps import launch
from sweeps.driver.preparation import SweepRequest, prepare_sweep

# For every numeric option: values it must refuse.
REFUSED = {
    "--trials": ["0", "-3"],
    "--time-budget": ["-5", "0", "nan", "inf"],
    "--num-cpus": ["0", "-1"],
    "--wait-for-resources": ["-1", "nan"],
    "--resources": ["cpus=0", "cpus=-1", "gpus=-1", "cpus=1.5,gpus=1.5"],
}


def _numeric_flags() -> set[str]:
    """The parser's options that take a number, or numbers (--resources)."""
    flags = set()
    for action in launch.build_parser()._actions:
        if action.type in (int, float) or action.dest == "resources":
            flags.update(f for f in action.option_strings if f.startswith("--"))
    return flags


def test_every_numeric_option_is_covered() -> None:
    assert _numeric_flags() == set(REFUSED)
    assert {flag for flag, *_ in launch.NUMERIC_OPTIONS.values()} == set(REFUSED) - {"--resources"}


@pytest.mark.parametrize(("flag", "value"), [(f, v) for f, values in REFUSED.items() for v in values])
def test_out_of_range_option_exits_2_before_anything_starts(flag, value, tmp_path, capsys) -> None:
    results = tmp_path / "results"
    code = launch.main(["--space", "digits_quick", "--results-dir", str(results), f"{flag}={value}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: Expected "), err
    assert ", but got " in err and (flag in err), err
    assert len(err.strip().splitlines()) == 1
    assert not results.exists()  # nothing was prepared


def test_accepted_values_pass_the_check() -> None:
    args = launch.build_parser().parse_args(
        ["--space", "x", "--trials", "1", "--time-budget", "0.5", "--num-cpus", "1", "--wait-for-resources", "0"]
        + ["--resources", "cpus=0.5,gpus=0"]
    )
    launch.check_options(args)


@pytest.mark.parametrize(("trials", "says"), [(5, "the first 5 of its 24 points run"), (30, "no effect here")])
def test_trials_on_a_grid_says_what_it_does_in_one_line(trials, says, tmp_path, capsys) -> None:
    request = SweepRequest(space="digits_quick", trials=trials, results_dir=tmp_path)
    prepared = prepare_sweep(request)
    capsys.readouterr()
    launch._say_what_trials_does(request, prepared)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trials" in err[0] and "grid" in err[0] and says in err[0], err
    assert len(prepared.grid) == min(trials, 24)


def test_trials_on_an_optuna_space_says_nothing(capsys) -> None:
    prepared = argparse.Namespace(space=argparse.Namespace(search="optuna"))
    launch._say_what_trials_does(SweepRequest(space="x", trials=5), prepared)
    assert capsys.readouterr().err == ""


def test_the_launcher_says_the_checkpoint_volume_before_it_starts(tmp_path, capsys) -> None:
    from dp_core.config import TrainConfig
    from sweeps.driver.checkpoint_volume import checkpoint_bytes

    prepared = prepare_sweep(SweepRequest(space="digits_quick", results_dir=tmp_path))
    capsys.readouterr()
    launch._say_checkpoint_volume(prepared)
    (line,) = capsys.readouterr().out.strip().splitlines()
    one = checkpoint_bytes(
        TrainConfig.from_dict(prepared.runnable[0].train_config), input_shape=(1, 8, 8), num_classes=10
    )
    assert line.startswith(f"checkpoints: one is about {one / 1000:.3g} kB (mlp")
    assert f"{len(prepared.runnable)} trial(s) save every 10 min" in line and "at most 20 each" in line
