"""What a running sweep shows on the console: a live progress display, or plain periodic lines.

On a terminal, one live panel (rich): trials finished out of the total, by outcome; elapsed time
and what is left of ``--time-budget``; the best accuracy so far within each reported ε bound. It
is cleared at the end, leaving one summary line above the frontier table. Without a terminal (CI,
Ray Job logs, a file) the same facts are printed as one plain line every ``interval_s`` seconds
and at the end. ``verbose`` adds one line per trial (and per skipped trial) in both cases.

The stages after the search (confirmation, refit) report through the same display
(:meth:`SweepProgress.stage` gives each a :class:`StageProgress`): a live bar on a terminal, a plain
line every ``interval_s`` without one, and one summary line when the stage is over.

:func:`quiet_libraries` hides the start-up chatter of Ray Tune, MLflow and Optuna (their
configuration box, a TensorBoard hint, INFO logs); warnings that matter still show.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from sweeps.results.frontier import Point, default_buckets

__all__ = ["SweepProgress", "StageProgress", "quiet_libraries"]

# Outcomes (sweeps.tracking.OUTCOMES) as the display groups them.
_GROUPS = {
    "completed": "done",
    "stopped_by_budget": "done",
    "pruned": "pruned",
    "skipped_over_budget": "skipped",
    "failed": "failed",
    "failed_oom": "failed",
    "interrupted": "interrupted",
}
_SHOWN = ("done", "pruned", "skipped", "failed")  # always; "interrupted" only once it happens


def _clock_text(seconds: float) -> str:
    hours, rest = divmod(max(0, round(seconds)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class _Display:
    """What a sweep's displays share: a rich live display of ``frame()`` on a terminal, else the
    ``summary_line()`` every ``interval_s`` seconds; one final summary line at ``close``."""

    #: Whether ``close`` prints the final line also with neither a live display nor plain lines.
    final_line_always = False

    def __init__(
        self,
        *,
        console: Console | None,
        live: bool | None,
        interval_s: float | None,
        clock: Callable[[], float],
    ) -> None:
        self.console = console if console is not None else Console(highlight=False)
        self.live = self.console.is_terminal if live is None else live
        self.interval_s = interval_s
        self._clock = clock
        self.started = clock()
        self._last_line = self.started
        self._lock = threading.Lock()  # the live display renders from its own thread
        self._display: Live | None = None
        self._rerouted: list[tuple[logging.StreamHandler, Any]] = []  # log handlers pointed at the display

    def frame(self) -> Any:
        """What the live display draws now (a rich renderable)."""
        raise NotImplementedError

    def summary_line(self, *, final: bool = False) -> str:
        """The plain status line (``final``: the last one, when the display closes)."""
        raise NotImplementedError

    def start(self) -> None:
        """The clock (elapsed, time budget) runs from here; on a terminal, the live display starts."""
        self.started = self._last_line = self._clock()
        if self.live and self._display is None:
            self._display = Live(
                get_renderable=self.frame,
                console=self.console,
                refresh_per_second=4,
                transient=True,
                redirect_stdout=True,
                redirect_stderr=True,
            )
            self._display.start()
            self._reroute_logging()

    def tick(self) -> None:
        """Without a terminal, print the summary line when ``interval_s`` has passed since the last."""
        if self.live or self.interval_s is None:
            return
        now = self._clock()
        if now - self._last_line >= self.interval_s:
            self._last_line = now
            self._print(self.summary_line())

    def close(self) -> None:
        """Stop the display and print the final summary line (once)."""
        if self._display is not None:
            for handler, stream in self._rerouted:
                handler.setStream(stream)
            self._rerouted = []
            self._display.stop()
            self._display = None
        if not self.__dict__.get("_closed") and (self.live or self.interval_s is not None or self.final_line_always):
            self._print(self.summary_line(final=True))
        self.live, self.interval_s, self._closed = False, None, True  # a second close prints nothing

    def _reroute_logging(self) -> None:
        """Log handlers made before the display write to the terminal itself, past the display's
        redirection of sys.stdout/sys.stderr, and break its frame: point them at the redirection."""
        originals = {id(sys.__stdout__), id(sys.__stderr__)}
        loggers = [
            logging.getLogger(),
            *(log for log in logging.Logger.manager.loggerDict.values() if isinstance(log, logging.Logger)),
        ]
        for log in loggers:
            for handler in log.handlers:
                if (
                    isinstance(handler, logging.StreamHandler)
                    and not isinstance(handler, logging.FileHandler)
                    and id(handler.stream) in originals
                ):
                    replacement = sys.stderr if handler.stream is sys.__stderr__ else sys.stdout
                    self._rerouted.append((handler, handler.setStream(replacement)))

    def elapsed(self) -> float:
        return self._clock() - self.started

    def say(self, text: str) -> None:
        """A line the user must read (a failure, a reason): above the live display while one runs."""
        self._print(text)

    def _print(self, text: str) -> None:
        # Through the console: on a terminal, rich prints it above the live display.
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


class SweepProgress(_Display):
    """Counts trials by outcome and the best point within each ε bound, and shows them.

    ``total`` is the sweep's trial count (None: unknown); ``epsilon_budget`` picks the reported ε
    bounds (:func:`sweeps.results.frontier.default_buckets`); ``time_budget_s`` is ``--time-budget``.
    ``live`` forces the terminal display on or off (default: whether ``console`` is a terminal).
    """

    def __init__(
        self,
        *,
        total: int | None,
        epsilon_budget: float | None = None,
        time_budget_s: float | None = None,
        verbose: bool = False,
        console: Console | None = None,
        live: bool | None = None,
        interval_s: float | None = 30.0,
        accuracy_name: str = "validation accuracy",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(console=console, live=live, interval_s=interval_s, clock=clock)
        self.total = total
        self.bounds: Sequence[float] = default_buckets(epsilon_budget)
        self.time_budget_s = time_budget_s
        self.verbose = verbose
        self.accuracy_name = accuracy_name
        self.counts: dict[str, int] = {}
        self.best: dict[float, Point] = {}  # ε bound -> most accurate point within it so far
        # What the stages after the search show on (close() turns the search's own display off).
        self._stage_settings = {"live": self.live, "interval_s": interval_s}

    def __getstate__(self) -> dict[str, Any]:
        # Tune saves what holds it (the searcher's skip callback): a console, a lock and a
        # display thread stay here; a copy unpickled elsewhere prints plain lines to stdout.
        return {**self.__dict__, "console": None, "_lock": None, "_display": None, "_rerouted": [], "live": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.console = Console(highlight=False)
        self._lock = threading.Lock()

    # ---- events ----------------------------------------------------------------------------

    def point(self, point: Point) -> None:
        """One epoch of one trial: it may be the best so far within some ε bounds."""
        if math.isnan(point.accuracy) or not math.isfinite(point.epsilon):
            return
        with self._lock:
            for bound in self.bounds:
                if point.epsilon <= bound:
                    best = self.best.get(bound)
                    if best is None or (point.accuracy, -point.epsilon) > (best.accuracy, -best.epsilon):
                        self.best[bound] = point
        self.tick()

    def trial_ended(self, *, name: str, outcome: str, detail: str = "") -> None:
        """A trial is over (``outcome`` as in sweeps.tracking.OUTCOMES); ``detail`` is its verbose line's end."""
        count = self._count(outcome)
        if self.verbose:
            where = f"[{count}/{self.total}]" if self.total else f"[{count}]"
            self._print(f"{where} {name:<11} {outcome:<17} {detail}".rstrip())
        self.tick()

    def skipped(self, *, name: str, reason: str, show: bool = False) -> None:
        """A trial that never ran: its planned ε was over the budget, or it could not be planned.
        Its line shows with ``verbose`` or ``show`` (a reason the user should read in any case)."""
        self._count("skipped_over_budget")
        if self.verbose or show:
            self._print(f"  skipped {name}: {reason}")
        self.tick()

    def _count(self, outcome: str) -> int:
        with self._lock:
            group = _GROUPS.get(outcome, outcome)
            self.counts[group] = self.counts.get(group, 0) + 1
            return self.finished

    # ---- what is shown ---------------------------------------------------------------------

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def _time_text(self) -> str:
        elapsed = self.elapsed()
        text = f"elapsed {_clock_text(elapsed)}"
        if self.time_budget_s is not None:
            left = max(0.0, self.time_budget_s - elapsed)
            return f"{text}, {_clock_text(left)} left of the {_clock_text(self.time_budget_s)} time budget"
        if self.total and 0 < self.finished < self.total:
            rate = elapsed / self.finished
            return f"{text}, about {_clock_text(rate * (self.total - self.finished))} to go at this rate"
        return text

    def _counts_text(self) -> str:
        shown = [*_SHOWN, *(g for g in self.counts if g not in _SHOWN)]
        return ", ".join(f"{self.counts.get(group, 0)} {group}" for group in shown)

    def _trials_text(self) -> str:
        of = f"/{self.total}" if self.total else ""
        return f"trials {self.finished}{of}: {self._counts_text()}"

    def best_text(self) -> str:
        """``best validation accuracy so far: ε ≤ 0.5 0.850, ε ≤ 1 0.925, …`` (– where none yet)."""
        with self._lock:
            cells = [
                f"ε ≤ {b:g} {self.best[b].accuracy:.3f}" if b in self.best else f"ε ≤ {b:g} –" for b in self.bounds
            ]
        return f"best {self.accuracy_name} so far: " + ", ".join(cells)

    def summary_line(self, *, final: bool = False) -> str:
        """The plain status line: trials by outcome, time, best so far per ε bound."""
        head = "sweep over" if final else "sweep running"
        return f"{head}: {self._trials_text()}; {self._time_text()}; {self.best_text()}"

    def frame(self) -> Any:
        """What the live display draws now (a rich renderable)."""
        with self._lock:
            done, total = self.finished, self.total
            table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1))
            table.add_column(f"best {self.accuracy_name} so far", style="bold")
            for bound in self.bounds:
                table.add_column(f"ε ≤ {bound:g}", justify="right")
            table.add_row("accuracy", *(f"{self.best[b].accuracy:.4f}" if b in self.best else "–" for b in self.bounds))
            table.add_row("at ε", *(f"{self.best[b].epsilon:.3f}" if b in self.best else "" for b in self.bounds))
            table.add_row("trial", *(f"{self.best[b].trial}" if b in self.best else "" for b in self.bounds))
            trials = self._trials_text()
        bar = ProgressBar(total=float(total) if total else None, completed=float(done), width=30)
        line = Table.grid(padding=(0, 1))
        line.add_row(bar, Text(trials))
        return Group(line, Text(self._time_text(), style="dim"), table)

    def stage(self, stage: str, *, runs: int, done_before: int = 0, what: str = "") -> StageProgress:
        """The display of a stage after the search (``confirmation``, ``refit``): on the same console,
        live where the search's was, plain lines at the same interval where it printed them."""
        return StageProgress(
            stage=stage,
            runs=runs,
            done_before=done_before,
            what=what,
            console=self.console,
            clock=self._clock,
            **self._stage_settings,
        )


class StageProgress(_Display):
    """A stage of runs after the search (the confirmation stage, its refit): runs done out of
    ``runs``, failed ones, time; one summary line at the end.

    ``done_before`` counts runs a resumed sweep had finished already (not run again); ``what``
    says what the runs are (e.g. ``18 configuration(s) x 3 fresh seeds``). Its summary line prints
    at ``close`` in every case: it replaces the stage's start and end lines.
    """

    final_line_always = True

    def __init__(
        self,
        *,
        stage: str,
        runs: int,
        done_before: int = 0,
        what: str = "",
        console: Console | None = None,
        live: bool | None = None,
        interval_s: float | None = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(console=console, live=live, interval_s=interval_s, clock=clock)
        self.stage = stage
        self.runs = runs
        self.done_before = done_before
        self.what = what
        self.finished = 0
        self.failed = 0

    def runs_ended(self, *, ok: int, failed: int = 0) -> None:
        """``ok`` runs measured their accuracy, ``failed`` did not (diverged, or their worker died)."""
        with self._lock:
            self.finished += ok + failed
            self.failed += failed
        self.tick()

    def _counts_text(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        before = f" ({self.done_before} done before)" if self.done_before else ""
        return f"{self.finished}/{self.runs} run(s){failed}{before}"

    def summary_line(self, *, final: bool = False) -> str:
        what = f" ({self.what})" if self.what else ""
        if final:
            return f"{self.stage} over: {self._counts_text()}{what}; took {_clock_text(self.elapsed())}"
        return f"{self.stage} running: {self._counts_text()}{what}; elapsed {_clock_text(self.elapsed())}"

    def frame(self) -> Any:
        with self._lock:
            done, text = self.finished, f"{self.stage}: {self._counts_text()}"
        line = Table.grid(padding=(0, 1))
        line.add_row(ProgressBar(total=float(max(self.runs, 1)), completed=float(done), width=30), Text(text))
        details = f"{self.what}; " if self.what else ""
        return Group(line, Text(f"{details}elapsed {_clock_text(self.elapsed())}", style="dim"))


class _DropStartupNotice(logging.Filter):
    """Drops Ray's notice that a local cluster turned on token authentication (its safe default);
    the warning that authentication is *off* still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


def quiet_libraries() -> None:
    """Hide what Ray Tune, MLflow and Optuna print at start-up; keep their warnings.

    Call after importing mlflow (it sets its own logger's level on import). Tune's new output
    engine prints its configuration box and a TensorBoard hint even at ``verbose=0``; the old one
    (``RAY_AIR_NEW_OUTPUT=0``) prints nothing at ``verbose=0``. Each setting is a default: an
    environment variable the user set wins.
    """
    import optuna

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    # Through Optuna's own switch: its logger is set to INFO when Optuna first configures it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # "The `process_trial_result` operation took … s, which may be a performance bottleneck":
    # Tune's control loop timing itself, nothing a user of the sweep can act on.
    logging.getLogger("ray.tune.utils.util").setLevel(logging.ERROR)
    token_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropStartupNotice) for f in token_logger.filters):
        token_logger.addFilter(_DropStartupNotice())
