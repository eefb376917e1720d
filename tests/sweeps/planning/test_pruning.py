"""Successive halving within ε bands: behind at the same privacy cost is pruned, nothing else."""

from sweeps.planning.pruning import BandedSuccessiveHalving, epsilon_band


def test_bands_are_half_octaves_and_infinity_is_separate() -> None:
    assert epsilon_band(1.0) == epsilon_band(1.4) != epsilon_band(1.5)
    assert epsilon_band(8.0) != epsilon_band(0.5)
    assert epsilon_band(float("inf")) not in {epsilon_band(x) for x in (0.1, 1, 10, 100)}


def test_rungs_follow_the_reduction_factor() -> None:
    assert BandedSuccessiveHalving(grace_period=2, max_epochs=20, reduction_factor=3).rungs == [2, 6, 18]


def test_a_low_noise_trial_does_not_prune_a_high_noise_one() -> None:
    rule = BandedSuccessiveHalving(grace_period=3, max_epochs=15)
    strong, weak = epsilon_band(8.0), epsilon_band(0.5)
    for i, acc in enumerate([0.85, 0.88, 0.9]):
        assert not rule.should_stop(trial_id=f"s{i}", band=strong, epoch=3, accuracy=acc)
    # Far behind the ε = 8 trials, but the first of its own band: it continues.
    assert not rule.should_stop(trial_id="w0", band=weak, epoch=3, accuracy=0.2)
    # In its own band, a trial clearly behind is stopped, one ahead continues.
    assert not rule.should_stop(trial_id="w1", band=weak, epoch=3, accuracy=0.3)
    assert rule.should_stop(trial_id="w2", band=weak, epoch=3, accuracy=0.1)


def test_a_trial_is_judged_once_per_rung() -> None:
    rule = BandedSuccessiveHalving(grace_period=2, max_epochs=10)
    rule.should_stop(trial_id="a", band=0, epoch=2, accuracy=0.9)
    assert not rule.should_stop(trial_id="c", band=0, epoch=2, accuracy=0.95)
    assert not rule.should_stop(trial_id="c", band=0, epoch=3, accuracy=0.0)  # same rung: no new verdict
    assert not rule.should_stop(trial_id="a", band=0, epoch=1, accuracy=0.0)  # before the first rung


def test_a_stopped_trial_stays_stopped_when_retried() -> None:
    rule = BandedSuccessiveHalving(grace_period=2, max_epochs=10)
    rule.should_stop(trial_id="a", band=0, epoch=2, accuracy=0.9)
    assert rule.should_stop(trial_id="b", band=0, epoch=2, accuracy=0.1)
    # Its worker died and the run starts over: the verdict is the same, at any epoch.
    assert rule.should_stop(trial_id="b", band=0, epoch=1, accuracy=0.5)


def test_judge_answers_for_many_trials_at_once() -> None:
    rule = BandedSuccessiveHalving(grace_period=2, max_epochs=10)
    assert rule.judge([("a", 0, 2, 0.9), ("b", 0, 2, 0.1), ("c", 1, 2, 0.1), ("d", 0, 1, 0.0)]) == ["b"]
