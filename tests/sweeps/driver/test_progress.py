"""The console of a running sweep: plain periodic lines without a terminal, a live display on one."""

from __future__ import annotations

import io
import logging
import math
import re

from rich.console import Console

from sweeps.driver.progress import SweepProgress, quiet_libraries
from sweeps.results.frontier import Point


class FakeClock:
    """Seconds that a test moves by hand (the display's time, not the test's)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _point(epsilon: float, accuracy: float, trial: str = "trial_0001", epoch: int = 1) -> Point:
    return Point(epsilon=epsilon, accuracy=accuracy, run_id="", trial=trial, epoch=epoch)


def _plain(**kwargs) -> tuple[SweepProgress, io.StringIO, FakeClock]:
    out, clock = io.StringIO(), FakeClock()
    console = Console(file=out, width=100)
    assert not console.is_terminal
    progress = SweepProgress(console=console, clock=clock, **kwargs)
    return progress, out, clock


def test_without_a_terminal_a_summary_line_every_interval_and_at_the_end() -> None:
    progress, out, clock = _plain(total=10, epsilon_budget=3.0, interval_s=30.0)
    progress.start()
    progress.skipped(name="trial_0009", reason="planned ε = 27.7 > budget 3")
    progress.point(_point(0.4, 0.70))
    progress.point(_point(0.9, 0.85, "trial_0002", 5))
    progress.point(_point(math.inf, 0.99, "trial_np"))  # non-private: no ε bound holds it
    progress.point(_point(2.5, float("nan")))  # diverged
    progress.trial_ended(name="trial_0001", outcome="completed", detail="epoch 20/20 ...")
    progress.trial_ended(name="trial_0002", outcome="pruned")
    assert out.getvalue() == ""  # not a line per trial, and the interval has not passed
    clock.now += 31
    progress.trial_ended(name="trial_0003", outcome="failed")
    lines = out.getvalue().splitlines()
    assert lines == [
        (
            "sweep running: trials 4/10: 1 done, 1 pruned, 1 skipped, 1 failed; elapsed 0:31, about 0:46 to go "
            "at this rate; best validation accuracy so far: ε ≤ 0.5 0.700, ε ≤ 1 0.850, ε ≤ 2 0.850, "
            "ε ≤ 3 0.850"
        )
    ]
    clock.now += 10
    progress.tick()  # 10 s since the last line: nothing
    progress.trial_ended(name="trial_0004", outcome="interrupted")
    assert len(out.getvalue().splitlines()) == 1
    progress.close()
    progress.close()  # once only
    final = out.getvalue().splitlines()[1:]
    assert final == [
        (
            "sweep over: trials 5/10: 1 done, 1 pruned, 1 skipped, 1 failed, 1 interrupted; elapsed 0:41, about "
            "0:41 to go at this rate; best validation accuracy so far: ε ≤ 0.5 0.700, ε ≤ 1 0.850, "
            "ε ≤ 2 0.850, ε ≤ 3 0.850"
        )
    ]


def test_the_time_budget_counts_down_and_empty_bounds_show_a_dash() -> None:
    progress, out, clock = _plain(total=None, epsilon_budget=8.0, time_budget_s=300.0, interval_s=30.0)
    progress.start()
    clock.now += 95
    progress.point(_point(6.0, 0.95))
    assert out.getvalue().splitlines() == [
        (
            "sweep running: trials 0: 0 done, 0 pruned, 0 skipped, 0 failed; elapsed 1:35, 3:25 left of the 5:00 time "
            "budget; best validation accuracy so far: ε ≤ 0.5 –, ε ≤ 1 –, ε ≤ 2 –, ε ≤ 3 –, ε ≤ 5 –, ε ≤ 8 0.950"
        )
    ]


def test_verbose_prints_a_line_per_trial_and_per_skip() -> None:
    progress, out, _ = _plain(total=2, epsilon_budget=8.0, verbose=True, interval_s=None)
    progress.start()
    progress.trial_ended(name="trial_0000", outcome="completed", detail="epoch 20/20  val acc 0.9611")
    progress.skipped(name="trial_0001", reason="planned ε = 27.7 > budget 8")
    progress.close()  # interval_s=None and no terminal: no summary lines at all
    assert out.getvalue().splitlines() == [
        "[1/2] trial_0000  completed         epoch 20/20  val acc 0.9611",
        "  skipped trial_0001: planned ε = 27.7 > budget 8",  # counted (2/2), not numbered: it never ran
    ]
    assert progress.counts == {"done": 1, "skipped": 1}


def test_an_unplannable_configuration_is_shown_without_verbose() -> None:
    progress, out, _ = _plain(total=5, interval_s=30.0)
    progress.skipped(name="trial_0003", reason="Expected lr > 0", show=True)
    assert out.getvalue() == "  skipped trial_0003: Expected lr > 0\n"


def test_on_a_terminal_the_live_display_shows_counts_time_and_the_best_per_bound() -> None:
    out, clock = io.StringIO(), FakeClock()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    progress = SweepProgress(total=1000, epsilon_budget=2.0, time_budget_s=600.0, console=console, clock=clock)
    assert progress.live
    progress.start()
    for i in range(3):
        progress.point(_point(0.3 + i * 0.5, 0.6 + i * 0.1, f"trial_{i:04d}", 4))
        progress.trial_ended(name=f"trial_{i:04d}", outcome="pruned" if i else "completed")
    assert out.getvalue() == "" or "\x1b[" in out.getvalue()  # only the display's frames, no plain lines
    clock.now += 65
    drawn = io.StringIO()
    Console(file=drawn, force_terminal=True, width=120, color_system=None).print(progress.frame())
    frame = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.getvalue())
    assert "trials 3/1000: 1 done, 2 pruned, 0 skipped, 0 failed" in frame
    assert "elapsed 1:05, 8:55 left of the 10:00 time budget" in frame
    rows = {line.split()[0]: line.split()[1:] for line in frame.splitlines() if line.strip()}
    assert rows["accuracy"] == ["0.6000", "0.7000", "0.8000"]  # ε ≤ 0.5, ≤ 1, ≤ 2
    assert rows["at"] == ["ε", "0.300", "0.800", "1.300"]
    assert rows["trial"] == ["trial_0000", "trial_0001", "trial_0002"]
    before = out.getvalue()
    progress.close()
    # The display is cleared (transient) and one plain line stays, above the frontier table to come.
    after = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()[len(before) :])
    assert after.strip().splitlines()[-1].startswith("sweep over: trials 3/1000: 1 done, 2 pruned")


def test_quiet_libraries_hides_info_and_the_token_notice_but_not_warnings(capsys) -> None:
    import mlflow  # noqa: F401  (sets its logger's level on import; quiet_libraries comes after)
    import optuna

    quiet_libraries()
    assert logging.getLogger("mlflow").getEffectiveLevel() == logging.WARNING
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    token = logging.getLogger("ray._private.authentication.authentication_token_setup")
    # The filters quiet_libraries put on Ray's token logger decide each record on its own (what an
    # earlier Ray start in this process did to the logger's level and handlers is not under test).
    filters = [f for f in token.filters if type(f).__name__ == "_DropStartupNotice"]
    assert len(filters) == 1
    quiet_libraries()  # a second call adds no second filter
    assert [type(f).__name__ for f in token.filters].count("_DropStartupNotice") == 1

    def passes(message: str) -> bool:
        record = token.makeRecord(token.name, logging.WARNING, __file__, 0, message, (), None)
        return all(f.filter(record) for f in token.filters)

    assert not passes("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
    assert passes("Token authentication is disabled for this Ray cluster. Anyone with network access ...")


def test_a_progress_pickles_and_its_copy_prints_plain_lines() -> None:
    import pickle
    import sys

    progress, _, _ = _plain(total=3, epsilon_budget=1.0, verbose=True, interval_s=None)
    progress.point(_point(0.4, 0.7))
    copy = pickle.loads(pickle.dumps(progress))  # Tune saves the searcher, whose skip callback holds it
    assert copy.best[0.5].accuracy == 0.7 and not copy.live and copy.verbose
    # Tune saves it while the live display runs, with log handlers pointed at the display.
    handler = logging.StreamHandler(sys.__stderr__)
    logging.getLogger("dpsweep.test.pickle").addHandler(handler)
    try:
        live = SweepProgress(total=3, console=Console(file=io.StringIO(), force_terminal=True))
        live.start()
        try:
            assert live._rerouted
            assert pickle.loads(pickle.dumps(live)).finished == 0
        finally:
            live.close()
    finally:
        logging.getLogger("dpsweep.test.pickle").removeHandler(handler)


def test_log_records_during_the_live_display_go_through_it_and_handlers_are_restored(monkeypatch) -> None:
    import sys

    terminal = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", terminal)  # what a handler made before the display holds
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(terminal)
    log = logging.getLogger("dpsweep.test.progress")
    log.addHandler(handler)
    log.propagate = False
    try:
        console = Console(file=io.StringIO(), force_terminal=True, width=100, color_system=None)
        progress = SweepProgress(total=2, console=console)
        progress.start()
        assert handler.stream is not terminal  # rich's redirection, which prints above the frame
        log.warning("a warning that matters")
        progress.close()
        assert handler.stream is terminal
        assert "a warning that matters" in console.file.getvalue() and terminal.getvalue() == ""
    finally:
        log.removeHandler(handler)


# ---- the stages after the search ----------------------------------------------------------------


def test_a_stage_prints_a_plain_line_every_interval_and_one_summary_line_after_the_searchs() -> None:
    progress, out, clock = _plain(total=4, epsilon_budget=1.0, interval_s=30.0)
    progress.start()
    progress.trial_ended(name="trial_0000", outcome="completed")
    progress.close()
    search_lines = out.getvalue().splitlines()
    assert len(search_lines) == 1 and search_lines[0].startswith("sweep over:")

    stage = progress.stage("confirmation", runs=54, done_before=3, what="18 configuration(s) x 3 fresh seeds")
    stage.start()
    for _ in range(20):  # 20 units of 2 runs, 5 s apart: one plain line per 30 s, not one per unit
        clock.now += 5
        stage.runs_ended(ok=2)
    clock.now += 5
    stage.runs_ended(ok=11, failed=3)
    stage.close()
    stage.close()  # a second close prints nothing
    lines = out.getvalue().splitlines()[1:]
    assert lines == [
        "confirmation running: 12/54 run(s) (3 done before) (18 configuration(s) x 3 fresh seeds); elapsed 0:30",
        "confirmation running: 24/54 run(s) (3 done before) (18 configuration(s) x 3 fresh seeds); elapsed 1:00",
        "confirmation running: 36/54 run(s) (3 done before) (18 configuration(s) x 3 fresh seeds); elapsed 1:30",
        "confirmation over: 54/54 run(s), 3 failed (3 done before) (18 configuration(s) x 3 fresh seeds); took 1:45",
    ]


def test_a_stage_without_plain_lines_still_prints_its_summary_line() -> None:
    out = io.StringIO()
    progress = SweepProgress(total=1, console=Console(file=out), live=False, interval_s=None, verbose=True)
    stage = progress.stage("refit", runs=6)
    stage.start()
    stage.runs_ended(ok=6)
    stage.close()
    assert out.getvalue().splitlines() == [stage.summary_line(final=True)]
    assert out.getvalue().startswith("refit over: 6/6 run(s); took ")


def test_on_a_terminal_a_stage_draws_a_bar_and_leaves_its_summary_line() -> None:
    out, clock = io.StringIO(), FakeClock()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    progress = SweepProgress(total=10, console=console, clock=clock)
    progress.start()
    progress.close()
    stage = progress.stage("refit", runs=6, what="2 chosen configuration(s) x 3 fresh seeds")
    assert stage.live  # live where the search's display was, though the search's display is closed
    stage.start()
    stage.runs_ended(ok=4)
    clock.now += 12
    drawn = io.StringIO()
    Console(file=drawn, force_terminal=True, width=120, color_system=None).print(stage.frame())
    frame = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.getvalue())
    assert "refit: 4/6 run(s)" in frame and "elapsed 0:12" in frame
    before = out.getvalue()
    stage.close()
    after = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()[len(before) :]).strip().splitlines()
    assert after[-1] == "refit over: 4/6 run(s) (2 chosen configuration(s) x 3 fresh seeds); took 0:12"
