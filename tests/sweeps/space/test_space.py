"""Search spaces: the shipped files are valid, and every bad input fails early with a useful message."""

from __future__ import annotations

import copy
import pickle
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from dp_core.config import ConfigError, TrainConfig
from sweeps.space import SPACES_DIR, Confirmation, Range, SearchSpace, list_spaces, load_space

GOOD = """\
name: {name}
description: a test space
fixed:
  dataset: digits
  model: digits_cnn
  epochs: 2
  delta: 1.0e-5
axes:
  max_grad_norm: [0.5, 1.0]
  noise_multiplier: [0.7, 1.0, 1.5]
epsilon_budget: 8.0
search: grid
"""


def write(tmp_path: Path, text: str, name: str = "space") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def write_good(
    tmp_path: Path, *, replace: tuple[str, str] | None = None, append: str = "", name: str = "space"
) -> Path:
    text = GOOD.format(name=name)
    if replace is not None:
        assert replace[0] in text, replace[0]
        text = text.replace(*replace)
    return write(tmp_path, text + textwrap.dedent(append), name=name)


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_space(str(path))
    message = str(info.value)
    assert str(path) in message, message
    return message


# ---- the shipped spaces -----------------------------------------------------------------------


def test_shipped_spaces_load_and_build_train_configs() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a shipped space whose name: differs from its file name fails here
        spaces = list_spaces()
    files = sorted(SPACES_DIR.glob("*.yaml"))
    assert len(spaces) == len(files) >= 5
    names = [space.name for space in spaces]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    assert {"digits_quick", "digits_grid", "digits_optuna", "mnist_grid", "cifar10_grid"} <= set(names)
    for space in spaces:
        assert space.name == space.source.stem
        # Strict for what we ship: the file says its own name (users' files may leave it out).
        assert yaml.safe_load(space.source.read_text(encoding="utf-8"))["name"] == space.source.stem
        assert space.description
        assert load_space(space.name) == space
        if space.search == "grid":
            points = space.grid_points()
            assert len(points) == space.grid_size
            for point in points:
                if space.kind == "federated":
                    from dp_core.federated import split_flat

                    config = split_flat(point, where=str(space.source))[0]
                else:
                    config = TrainConfig.from_dict(point, where=str(space.source))
                assert config.privacy.epsilon_budget == space.epsilon_budget
        else:
            assert space.trials is not None and space.trials >= 1


def test_digits_quick_is_a_small_grid_with_a_real_spread() -> None:
    space = load_space("digits_quick")
    assert space.search == "grid" and space.fixed["dataset"] == "digits"
    assert 18 <= space.grid_size <= 24
    assert space.epsilon_budget == 8.0 and space.pruner == "asha" and space.cpus_per_trial == 1
    # Some trials plan ε far over the budget (shown skipped), the others spread below it.
    from sweeps.planning import plan_trial

    by_sigma = {point["noise_multiplier"]: point for point in space.grid_points()}
    lowest, highest = min(by_sigma), max(by_sigma)
    over = plan_trial(by_sigma[lowest], name="low", axis_values={}).planned_epsilon
    under = plan_trial(by_sigma[highest], name="high", axis_values={}).planned_epsilon
    assert over > space.epsilon_budget > 4 * under


def test_load_by_path_equals_load_by_name() -> None:
    assert load_space(str(SPACES_DIR / "digits_quick.yaml")) == load_space("digits_quick")
    assert load_space(SPACES_DIR / "digits_quick.yaml") == load_space("digits_quick")


def test_unknown_space_name_lists_known_names() -> None:
    with pytest.raises(ConfigError) as info:
        load_space("digits_quik")
    message = str(info.value)
    assert "'digits_quik'" in message
    assert "Did you mean 'digits_quick'?" in message
    assert "digits_grid" in message and "mnist_grid" in message


def test_missing_file_says_it_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    message = load_error(path)
    assert "does not exist" in message


# ---- grid points, ranges, trial configs -------------------------------------------------------


def test_grid_points_count_and_order(tmp_path: Path) -> None:
    space = load_space(str(write_good(tmp_path)))
    points = space.grid_points()
    assert len(points) == space.grid_size == 6
    assert [(p["max_grad_norm"], p["noise_multiplier"]) for p in points] == [
        (0.5, 0.7), (0.5, 1.0), (0.5, 1.5), (1.0, 0.7), (1.0, 1.0), (1.0, 1.5),
    ]  # fmt: skip
    for point in points:
        assert point["dataset"] == "digits" and point["epochs"] == 2 and point["epsilon_budget"] == 8.0
    assert space.grid_axis_values()[1] == {"max_grad_norm": 0.5, "noise_multiplier": 1.0}


def test_parameter_averaging_on_and_off_is_an_axis(tmp_path: Path) -> None:
    space = load_space(
        str(write_good(tmp_path, replace=("  max_grad_norm: [0.5, 1.0]\n", "  ema_decay: [null, 0.999]\n")))
    )
    points = space.grid_points()
    assert [p["ema_decay"] for p in points] == [None] * 3 + [0.999] * 3
    assert [TrainConfig.from_dict(p).optimizer.ema_decay for p in points] == [None] * 3 + [0.999] * 3
    message = load_error(
        write_good(tmp_path, replace=("  max_grad_norm: [0.5, 1.0]\n", "  ema_decay: [0.9, 1.0]\n"), name="bad")
    )
    assert "ema_decay" in message


def test_trials_caps_a_grid_to_its_first_points(tmp_path: Path) -> None:
    space = load_space(str(write_good(tmp_path, append="trials: 4\n")))
    assert space.grid_size == 6
    assert [p["noise_multiplier"] for p in space.grid_points()] == [0.7, 1.0, 1.5, 0.7]


def test_range_grid_values_log_linear_integer() -> None:
    assert Range(low=0.1, high=10.0, log=True, num=3).grid_values() == [0.1, 1.0, 10.0]
    assert Range(low=0.2, high=2.0, log=True, num=3).grid_values() == [0.2, 0.6325, 2.0]
    assert Range(low=0.0, high=1.0, num=5).grid_values() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert Range(low=0.1, high=0.3, num=3).grid_values() == [0.1, 0.2, 0.3]
    assert Range(low=0.5, high=0.5, num=1).grid_values() == [0.5]
    ints = Range(low=32, high=256, log=True, num=4, integer=True).grid_values()
    assert ints == [32, 64, 128, 256] and all(type(v) is int for v in ints)
    assert Range(low=10, high=20, num=3, integer=True).grid_values() == [10, 15, 20]
    assert Range(low=1, high=2, num=5, integer=True).grid_values() == [1, 2]  # rounding merges points


def test_integer_keys_get_integer_ranges(tmp_path: Path) -> None:
    path = write_good(
        tmp_path,
        append="""\
        trials: 100
        """,
        replace=(
            "  noise_multiplier: [0.7, 1.0, 1.5]\n",
            "  noise_multiplier: [1.0]\n  batch_size: {low: 32, high: 128, log: true, num: 3}\n",
        ),
    )
    space = load_space(str(path))
    axis = space.axes["batch_size"]
    assert isinstance(axis, Range) and axis.integer
    assert [p["batch_size"] for p in space.grid_points()] == [32, 64, 128, 32, 64, 128]


def test_trial_config_adds_epsilon_budget(tmp_path: Path) -> None:
    space = load_space(str(write_good(tmp_path)))
    config = space.trial_config({"max_grad_norm": 1.0, "noise_multiplier": 0.7})
    assert config == {
        "dataset": "digits", "model": "digits_cnn", "epochs": 2, "delta": 1e-5,
        "max_grad_norm": 1.0, "noise_multiplier": 0.7, "epsilon_budget": 8.0, "validation_fraction": 0.1,
    }  # fmt: skip
    assert TrainConfig.from_dict(config).privacy.epsilon_budget == 8.0
    no_budget = load_space(str(write_good(tmp_path, replace=("epsilon_budget: 8.0\n", ""), name="nob")))
    assert no_budget.epsilon_budget is None
    assert "epsilon_budget" not in no_budget.trial_config({"max_grad_norm": 1.0, "noise_multiplier": 0.7})
    with pytest.raises(ConfigError, match="Did you mean 'max_grad_norm'"):
        space.trial_config({"max_grad_nrm": 1.0})


def test_each_trial_gets_its_own_seed_unless_the_space_sets_one(tmp_path: Path) -> None:
    unseeded = load_space(str(write_good(tmp_path)))
    assert unseeded.seed is None and not unseeded.public_seed  # the launcher draws a secret root
    axis_values = {"max_grad_norm": 1.0, "noise_multiplier": 0.7}
    with pytest.raises(ConfigError, match="not drawn yet"):
        unseeded.trial_seed(0)
    space = unseeded.with_secret_seed(123456789)
    assert "seed" not in space.trial_config(axis_values)
    seeds = [space.trial_config(axis_values, number=n)["seed"] for n in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= seed < 2**62 for seed in seeds)
    assert seeds[:3] == [space.trial_seed(n) for n in range(3)]  # a resumed sweep draws the same
    other = load_space(str(write_good(tmp_path, append="seed: 1\n", name="other")))
    assert other.public_seed and other.with_secret_seed(5) is other  # a seed in the file is kept, and public
    assert other.trial_seed(0) != space.trial_seed(0)  # the sweep's seed picks the streams
    TrainConfig.from_dict(space.trial_config(axis_values, number=7))  # a valid training seed
    fixed = load_space(str(write_good(tmp_path, replace=("  epochs: 2\n", "  epochs: 2\n  seed: 5\n"), name="fixed")))
    assert fixed.public_seed
    assert fixed.with_secret_seed(9).trial_config(axis_values, number=7)["seed"] == 5  # common random numbers, as asked


def test_space_is_immutable_and_pickles(tmp_path: Path) -> None:
    space = load_space(str(write_good(tmp_path)))
    with pytest.raises(TypeError):
        space.fixed["epochs"] = 3  # type: ignore[index]
    with pytest.raises(TypeError):
        space.axes["lr"] = (1.0,)  # type: ignore[index]
    with pytest.raises(AttributeError):
        space.search = "optuna"  # type: ignore[misc]
    again = pickle.loads(pickle.dumps(space))
    assert again == space and isinstance(again, SearchSpace)
    assert copy.deepcopy(space).grid_points() == space.grid_points()


def test_scientific_notation_without_dot_is_a_number(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-5 as the string '1e-5'; users mean the number.
    space = load_space(str(write_good(tmp_path, replace=("delta: 1.0e-5", "delta: 1e-5"))))
    assert space.fixed["delta"] == 1e-5


def test_with_overrides_revalidates(tmp_path: Path) -> None:
    space = load_space("digits_optuna")
    assert space.with_overrides(trials=5).trials == 5
    with pytest.raises(ConfigError) as info:
        space.with_overrides(search="grid")
    assert "num" in str(info.value) and str(space.source) in str(info.value)
    grid = load_space(str(write_good(tmp_path)))
    with pytest.raises(ConfigError, match="trials"):
        grid.with_overrides(search="optuna")
    assert grid.with_overrides(search="optuna", trials=3).search == "optuna"


def test_optuna_space_allows_ranges_without_num(tmp_path: Path) -> None:
    path = write_good(
        tmp_path,
        replace=("search: grid", "search: optuna\ntrials: 10"),
        append="""\
        objective: multi
        pruner: none
        resources: {cpus: 0.5, gpus: 0.25}
        seed: 3
        """,
    )
    text = path.read_text().replace("max_grad_norm: [0.5, 1.0]", "max_grad_norm: {low: 0.1, high: 10, log: true}")
    path.write_text(text)
    space = load_space(str(path))
    assert space.axes["max_grad_norm"] == Range(low=0.1, high=10.0, log=True)
    assert (space.search, space.trials, space.objective, space.pruner) == ("optuna", 10, "multi", "none")
    assert (space.cpus_per_trial, space.gpus_per_trial, space.seed) == (0.5, 0.25, 3)


# ---- one test per bad input -------------------------------------------------------------------


def test_typo_in_top_level_key_suggests_axes(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("axes:", "axis:")))
    assert "'axis'" in message and "Did you mean 'axes'?" in message
    assert "epsilon_budget" in message and "search" in message  # the allowed keys are listed


@pytest.mark.parametrize("typo", ["learning_rate", "lrr"])
def test_typo_in_train_key_of_axes_suggests_lr(tmp_path: Path, typo: str) -> None:
    message = load_error(
        write_good(
            tmp_path,
            replace=("  noise_multiplier: [0.7, 1.0, 1.5]\n", f"  noise_multiplier: [0.7]\n  {typo}: [0.1, 1.0]\n"),
        )
    )
    assert f"'{typo}'" in message and "Did you mean 'lr'?" in message and "axes of" in message


def test_synonym_of_a_train_key_gets_a_suggestion(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("  noise_multiplier:", "  sigma:")))
    assert "'sigma'" in message and "Did you mean 'noise_multiplier'?" in message


def test_typo_in_train_key_of_fixed(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("  epochs: 2", "  epoch: 2")))
    assert "'epoch'" in message and "Did you mean 'epochs'?" in message and "fixed of" in message


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: space\nfixed: {dataset: digits\naxes:\n  lr: [0.1]\nsearch: grid\n")
    message = load_error(path)
    assert "Malformed YAML" in message and "line " in message and "column " in message


def test_malformed_yaml_bad_indentation_names_line_3(tmp_path: Path) -> None:
    path = write(tmp_path, "name: space\nfixed:\n  dataset: digits\n   model: mlp\naxes: {lr: [0.1]}\nsearch: grid\n")
    message = load_error(path)
    assert "line 4" in message or "line 3" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "- just\n- a list\n"))
    assert "mapping" in message


def test_missing_required_key(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("search: grid\n", "")))
    assert "'search'" in message and "Required keys" in message


def test_empty_grid(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("[0.7, 1.0, 1.5]", "[]")))
    assert "empty grid" in message and "axes.noise_multiplier" in message


def test_empty_axes(tmp_path: Path) -> None:
    path = write(tmp_path, "name: space\nfixed: {dataset: digits}\naxes: {}\nsearch: grid\n")
    message = load_error(path)
    assert "axes" in message and "non-empty" in message


def test_range_low_above_high(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, append="", replace=("[0.5, 1.0]", "{low: 2.0, high: 0.5, num: 3}")))
    assert "`low <= high` must hold, but got (low=2.0, high=0.5) for axes.max_grad_norm" in message


def test_log_range_needs_positive_low(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("[0.5, 1.0]", "{low: 0, high: 2.0, log: true, num: 3}")))
    assert "low > 0" in message and "axes.max_grad_norm" in message and "low=0" in message


def test_range_without_num_in_grid_mode(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("[0.5, 1.0]", "{low: 0.5, high: 2.0}")))
    assert "axes.max_grad_norm.num" in message and "search: grid" in message and "optuna" in message


def test_range_with_unknown_key(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("[0.5, 1.0]", "{low: 0.5, high: 2.0, steps: 3}")))
    assert "'steps'" in message and "axes.max_grad_norm" in message and "num" in message


def test_range_num_must_be_positive_int(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("[0.5, 1.0]", "{low: 0.5, high: 2.0, num: 0}")))
    assert "axes.max_grad_norm.num" in message and "integer >= 1" in message


def test_integer_range_needs_integer_bounds(tmp_path: Path) -> None:
    path = write_good(
        tmp_path,
        replace=(
            "  noise_multiplier: [0.7, 1.0, 1.5]\n",
            "  noise_multiplier: [1.0]\n  batch_size: {low: 32.5, high: 128, num: 2}\n",
        ),
    )
    message = load_error(path)
    assert "axes.batch_size.low" in message and "32.5" in message and "integer" in message


def test_unknown_search_mode(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("search: grid", "search: random")))
    assert "search='random'" in message and "grid, optuna" in message


def test_unknown_objective_and_pruner(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, append="objective: pareto\n"))
    assert "objective='pareto'" in message and "multi, single" in message
    message = load_error(write_good(tmp_path, append="pruner: hyperband\n", name="p"))
    assert "pruner='hyperband'" in message and "asha, none" in message


def test_noise_multiplier_and_target_epsilon_both(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("  epochs: 2", "  epochs: 2\n  target_epsilon: 3.0")))
    assert "noise_multiplier" in message and "target_epsilon" in message and "at most one" in message


def test_batch_size_and_sample_rate_both(tmp_path: Path) -> None:
    message = load_error(
        write_good(tmp_path, replace=("  epochs: 2", "  epochs: 2\n  batch_size: 64\n  sample_rate: 0.05"))
    )
    assert "batch_size" in message and "sample_rate" in message


def test_bad_value_caught_by_train_config(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("[0.7, 1.0, 1.5]", "[-1]")))
    assert "noise_multiplier=-1" in message and ">= 0" in message


def test_unknown_model_name(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("model: digits_cnn", "model: resnet9000")))
    assert "model='resnet9000'" in message and "digits_cnn" in message and "mnist_cnn" in message


def test_unknown_dataset_in_an_axis(tmp_path: Path) -> None:
    path = write_good(tmp_path, replace=("  dataset: digits\n", ""))
    path.write_text(path.read_text().replace("axes:\n", "axes:\n  dataset: [digits, imagenet]\n"))
    message = load_error(path)
    assert "dataset='imagenet'" in message and "cifar10" in message and "dataset='imagenet'" in message


def test_zero_delta_caught_by_train_config(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("delta: 1.0e-5", "delta: 0")))
    assert "delta=0" in message


def test_wrong_type_for_an_axis(tmp_path: Path) -> None:
    path = write_good(
        tmp_path, replace=("  noise_multiplier: [0.7, 1.0, 1.5]\n", "  noise_multiplier: [1.0]\n  lr: fast\n")
    )
    message = load_error(path)
    assert "axes.lr" in message and "'fast'" in message and "list" in message and "range" in message


def test_wrong_type_for_a_fixed_value(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("  epochs: 2", "  epochs: 2\n  lr: fast")))
    assert "lr='fast'" in message and "number" in message


def test_wrong_type_inside_a_grid_list(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("[0.7, 1.0, 1.5]", "[0.7, [1.0]]")))
    assert "axes.noise_multiplier[1]" in message and "single value" in message


def test_duplicate_grid_value(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("[0.7, 1.0, 1.5]", "[0.7, 1.0, 0.7]")))
    assert "axes.noise_multiplier" in message and "distinct" in message and "0.7" in message


def test_key_in_both_fixed_and_axes(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("  epochs: 2", "  epochs: 2\n  max_grad_norm: 1.0")))
    assert "'max_grad_norm'" in message and "both fixed and axes" in message


def test_epsilon_budget_belongs_at_top_level(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("  epochs: 2", "  epochs: 2\n  epsilon_budget: 4.0")))
    assert "epsilon_budget" in message and "top level" in message


def test_a_name_other_than_the_file_stem_is_a_warning_and_the_stem_wins(tmp_path: Path) -> None:
    path = write_good(tmp_path, name="other")
    path.write_text(path.read_text().replace("name: other", "name: something_else"))
    with pytest.warns(UserWarning) as caught:
        space = load_space(str(path))
    assert space.name == "other"
    message = str(caught[0].message)
    assert "name='something_else'" in message and "'other'" in message and str(path) in message
    assert caught[0].filename == __file__  # points at the caller of load_space, not into sweeps.space


def test_a_space_without_name_takes_its_file_stem(tmp_path: Path) -> None:
    path = write_good(tmp_path, name="my_sweep")
    path.write_text(path.read_text().replace("name: my_sweep\n", ""))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        space = load_space(str(path))
    assert space.name == "my_sweep"
    assert load_error(write(tmp_path, GOOD.format(name="''"), name="empty")).count("non-empty string") == 1


def test_optuna_without_trials(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("search: grid", "search: optuna")))
    assert "trials=None" in message and "integer >= 1" in message and "optuna" in message


def test_grid_trials_must_be_positive(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, append="trials: 0\n"))
    assert "trials=0" in message and "integer >= 1" in message


def test_negative_gpus(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, append="resources: {cpus: 1, gpus: -1}\n"))
    assert "resources.gpus=-1" in message and ">= 0" in message


@pytest.mark.parametrize("gpus", [2, 1.5, 8])
def test_more_than_one_gpu_per_trial_is_refused_with_the_fix(tmp_path: Path, gpus: float) -> None:
    """A trial trains on one device: a second GPU would sit idle. The message says what to write instead."""
    message = load_error(write_good(tmp_path, append=f"resources: {{cpus: 4, gpus: {gpus}}}\n"))
    assert f"resources.gpus={gpus:g}" in message and "at most 1 GPU per trial" in message
    assert "gpus: 1" in message and "gpus: 0.25" in message and "side by side" in message


def test_one_gpu_or_a_fraction_per_trial_loads(tmp_path: Path) -> None:
    for gpus in (1, 0.25, 0):
        space = load_space(str(write_good(tmp_path, append=f"resources: {{cpus: 1, gpus: {gpus}}}\n")))
        assert space.gpus_per_trial == gpus


def test_the_launcher_refuses_two_gpus_per_trial_with_exit_2_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sweeps.launch import main

    space = write_good(tmp_path, append="resources: {cpus: 1, gpus: 2}\n")
    results = tmp_path / "results"
    assert (
        main(["--space", str(space), "--results-dir", str(results), "--tracking-uri", f"file:{tmp_path}/mlruns"]) == 2
    )
    error = capsys.readouterr().err
    assert "at most 1 GPU per trial" in error and str(space) in error
    assert not results.exists() and not (tmp_path / "mlruns").exists()


def test_channels_last_with_an_engine_it_breaks_is_refused_when_the_space_loads(tmp_path: Path) -> None:
    path = write_good(
        tmp_path, replace=("  epochs: 2\n", "  epochs: 2\n  channels_last: true\n  grad_sample_mode: hooks\n")
    )
    message = load_error(path)
    assert "grad_sample_mode='hooks' with channels_last=True" in message


def test_checkpoint_every_minutes_defaults_to_ten_and_must_be_positive(tmp_path: Path) -> None:
    assert load_space(str(write_good(tmp_path))).checkpoint_every_minutes == 10.0
    every_two = load_space(str(write_good(tmp_path, append="checkpoint_every_minutes: 2.5\n", name="c")))
    assert every_two.checkpoint_every_minutes == 2.5
    assert pickle.loads(pickle.dumps(every_two)).checkpoint_every_minutes == 2.5  # as Ray ships it
    for bad in ("0", "-1", "often"):
        message = load_error(write_good(tmp_path, append=f"checkpoint_every_minutes: {bad}\n", name="b"))
        assert "but got checkpoint_every_minutes=" in message and bad in message and "> 0" in message


def test_zero_cpus_and_unknown_resource(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, append="resources: {cpus: 0}\n"))
    assert "resources.cpus=0" in message and "> 0" in message
    message = load_error(write_good(tmp_path, append="resources: {cpu: 1}\n", name="r"))
    assert "'cpu'" in message and "Did you mean 'cpus'?" in message


def test_epsilon_budget_must_be_positive(tmp_path: Path) -> None:
    message = load_error(write_good(tmp_path, replace=("epsilon_budget: 8.0", "epsilon_budget: -2")))
    assert "epsilon_budget=-2" in message and "> 0" in message


def test_python_tags_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(
        tmp_path,
        f"""\
        name: !!python/object/apply:os.system ["touch {marker}"]
        fixed: {{dataset: digits}}
        axes: {{lr: [0.1]}}
        search: grid
        """,
    )
    message = load_error(path)
    assert "python/object/apply:os.system" in message and "line 1" in message
    assert not marker.exists()


# ---- validation split and confirmation stage ----------------------------------------------------


def test_a_sweep_holds_out_validation_and_confirms_by_default(tmp_path: Path) -> None:
    space = load_space(str(write_good(tmp_path)))
    assert space.confirm == Confirmation(top=3, seeds=3, baseline=True, refit=True)
    assert space.trial_config({"max_grad_norm": 1.0, "noise_multiplier": 0.7})["validation_fraction"] == 0.1
    custom = load_space(
        str(
            write_good(
                tmp_path,
                name="custom",
                append="confirm: {top: 2, seeds: 5}\n",
                replace=("  delta: 1.0e-5\n", "  delta: 1.0e-5\n  validation_fraction: 0.2\n"),
            )
        )
    )
    assert custom.confirm == Confirmation(top=2, seeds=5)
    assert custom.trial_config({"max_grad_norm": 1.0, "noise_multiplier": 0.7})["validation_fraction"] == 0.2
    assert load_space(str(write_good(tmp_path, name="unconfirmed", append="confirm: off\n"))).confirm is None
    held_out = load_space(
        str(write_good(tmp_path, name="held_out", append="confirm: {refit: false, baseline: false}\n"))
    )
    assert held_out.confirm == Confirmation(top=3, seeds=3, baseline=False, refit=False)


@pytest.mark.parametrize(
    ("append", "replace", "needle"),
    [
        ("confirm: {top: 2, seed: 3}\n", None, "Did you mean 'seeds'"),
        ("confirm: {seeds: 1}\n", None, "confirm.seeds"),
        ("confirm: {top: 0}\n", None, "confirm.top"),
        ("confirm: {refit: yes please}\n", None, "confirm.refit"),
        ("confirm: {baseline: 1}\n", None, "confirm.baseline"),
        ("confirm: {refits: false}\n", None, "Did you mean 'refit'"),
        ("", ("  delta: 1.0e-5\n", "  delta: 1.0e-5\n  validation_fraction: 0.0\n"), "never on test data"),
        ("", ("  delta: 1.0e-5\n", "  delta: 1.0e-5\n  validation_fraction: 0.6\n"), "validation_fraction"),
    ],
)
def test_bad_confirmation_or_validation_settings_are_refused(
    tmp_path: Path, append: str, replace: Any, needle: str
) -> None:
    assert needle in load_error(write_good(tmp_path, append=append, replace=replace))
