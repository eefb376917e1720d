"""Screenshots of what a user sees in MLflow's UI after a sweep, taken in headless Chromium.

    python docs/make_screenshots.py                    # runs a small sweep in a temporary folder first
    python docs/make_screenshots.py --tracking-uri sqlite:////tmp/dps1000/mlflow.db   # its latest sweep

It starts ``mlflow server`` on loopback over the sweep's store and drives Debian's ``chromium``
(``apt-get install -y chromium``) over the DevTools protocol on a pipe, so it needs no Python
package beyond the project's. It clicks what the README tells a user to click and writes
``docs/mlflow_*.png``: the parent run's description and its ``frontier.png``, the runs table
filtered to the frontier, and those runs compared (parallel coordinates, ε-vs-accuracy scatter).

It is a browser test as well: it exits 1, saying why, if a page does not render (a nearly blank
screenshot, or page text without what the page must show) or if the frontier filter finds no
runs (checked first with ``MlflowClient.search_runs``, with the same filter string the README
gives). Not part of ``pytest``: it needs Chromium and takes 1-3 minutes.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweeps.tracking.tags import FRONTIER_FILTER  # noqa: E402 (after the sys.path line above)

# A sweep of the benchmark space, small enough for a minute on 2 CPUs.
SMALL_SWEEP = {"trials": "60", "epochs": "10"}


class PageError(RuntimeError):
    """A page did not render what it must show."""


# ---- a headless Chromium, driven over the DevTools protocol --------------------------------------


class Chromium:
    """Headless Chromium on ``--remote-debugging-pipe``: commands go in on its fd 3, answers come
    out on its fd 4, one JSON message each, ended by a NUL byte. One page, one session."""

    def __init__(self, *, binary: str, width: int, height: int) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        self.profile = tempfile.mkdtemp(prefix="dpsweep-chromium-")
        arguments = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        # A small Python puts the pipe's ends on fds 3 and 4, where Chromium expects them, and
        # becomes Chromium (no preexec_fn: this process has threads).
        on_3_and_4 = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
            "os.execvp(sys.argv[3], sys.argv[3:])"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", on_3_and_4, str(to_browser_read), str(from_browser_write), *arguments],
            pass_fds=(to_browser_read, from_browser_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._answers: dict[Any, dict[str, Any]] = {}
        self._next_id = 0
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            page=True,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _read(self) -> None:
        pending = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            pending += chunk
            *messages, pending = pending.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._changed:
                        self._answers[message["id"]] = message
                        self._changed.notify_all()
        with self._changed:
            self._answers[None] = {"error": "Chromium closed its pipe"}
            self._changed.notify_all()

    def call(self, method: str, *, page: bool = False, timeout: float = 60, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        number = self._next_id
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if page:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        with self._changed:
            self._changed.wait_for(lambda: number in self._answers or None in self._answers, timeout)
            answer = self._answers.pop(number, None) or self._answers.get(None) or {"error": "no answer"}
        if "error" in answer:
            raise PageError(f"Chromium: {method}: {answer['error']}")
        return answer["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", page=True, expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", page=True, url=url)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, what: str, ready: Callable[[], Any], *, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = ready()
            if value:
                return value
            time.sleep(0.5)
        raise PageError(f"{what} did not show within {timeout:g} s; the page read:\n{self.text()[:1500]}")

    def wait_for_text(self, *needles: str, timeout: float = 60) -> str:
        def shown() -> str:
            text = self.text()
            return text if all(needle in text for needle in needles) else ""

        return self.wait_for(f"text {needles!r}", shown, timeout=timeout)

    def click(self, selector: str, *, text: str | None = None, index: int = 0, shift: bool = False) -> None:
        """A real mouse click (press and release) on the element's centre, as a user's; ``index``
        counts from the end when negative."""
        find = f"""(() => {{
            const all = [...document.querySelectorAll({json.dumps(selector)})].filter(e => e.offsetParent !== null
                && ({json.dumps(text)} === null || e.innerText.trim() === {json.dumps(text)}));
            const e = all.at({index}); if (!e) return null;
            e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()"""
        where = self.wait_for(
            f"something to click: {selector} {text or ''} #{index}", lambda: self.evaluate(find), timeout=15
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent",
                page=True,
                type=kind,
                x=where[0],
                y=where[1],
                button="left",
                clickCount=1,
                modifiers=8 if shift else 0,
            )
        time.sleep(0.7)

    def key(self, name: str) -> None:
        codes = {"Escape": 27, "Enter": 13}
        for kind in ("keyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent", page=True, type=kind, key=name, code=name, windowsVirtualKeyCode=codes[name]
            )
        time.sleep(0.7)

    def screenshot(self, path: Path, *, check: bool = True) -> None:
        data = base64.b64decode(self.call("Page.captureScreenshot", page=True, format="png")["data"])
        path.write_bytes(data)
        if check:
            _require_not_blank(path)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
            self.process.wait(timeout=30)
        except (PageError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(timeout=30)
        finally:
            os.close(self._to_browser)
            shutil.rmtree(self.profile, ignore_errors=True)


def _require_not_blank(path: Path) -> None:
    """A rendered page has text and lines: at least 2 % of its pixels differ from the most common colour."""
    import matplotlib.image
    import numpy as np

    pixels = (matplotlib.image.imread(path)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    share = float(np.any(np.abs(pixels.astype(int) - background) > 24, axis=1).mean())
    if share < 0.02:
        raise PageError(f"{path.name} is nearly blank: {share:.1%} of its pixels differ from the background")


# ---- the sweep, the store, the server ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_small_sweep(folder: Path) -> str:
    """The benchmark space cut to ``SMALL_SWEEP``, swept into an sqlite store in ``folder``; its URI."""
    text = (ROOT / "bench" / "spaces" / "digits_bench.yaml").read_text(encoding="utf-8")
    text = text.replace("name: digits_bench\n", "").replace("trials: 1000", f"trials: {SMALL_SWEEP['trials']}")
    text = text.replace("  epochs: 20", f"  epochs: {SMALL_SWEEP['epochs']}")
    space = folder / "screenshot_sweep.yaml"  # no name: it is the file's
    space.write_text(text, encoding="utf-8")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    print(f"running a {SMALL_SWEEP['trials']}-trial sweep of {space.name} ...", flush=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.launch",
            "--space",
            str(space),
            "--tracking-uri",
            uri,
            "--results-dir",
            str(folder / "results"),
        ],
        check=False,
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=1800,
    )
    if done.returncode != 0:
        raise PageError(f"the sweep failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return uri


class Sweep:
    """The latest sweep in the store: its parent run and its frontier runs, read with MlflowClient."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise PageError(f"no experiment {experiment!r} in {tracking_uri}")
        self.experiment_id = found.experiment_id
        parents = client.search_runs(
            [self.experiment_id],
            "tags.`dpsweep.role` = 'sweep'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not parents:
            raise PageError(f"no sweep in experiment {experiment!r} of {tracking_uri}")
        self.parent = parents[0]
        # The README's filter string, narrowed to this sweep.
        self.filter = f"{FRONTIER_FILTER} and tags.`mlflow.parentRunId` = '{self.parent.info.run_id}'"
        self.frontier = client.search_runs(
            [self.experiment_id], self.filter, max_results=1000, order_by=["attributes.run_name ASC"]
        )
        if not self.frontier:
            raise PageError(
                f"the frontier filter {FRONTIER_FILTER!r} finds no runs of sweep "
                f"{self.parent.info.run_name} in {tracking_uri}"
            )
        metrics = self.frontier[0].data.metrics
        self.accuracy = "val_accuracy" if "val_accuracy" in metrics else "test_accuracy"


class MlflowServer:
    """``mlflow server`` over the store, on a free loopback port, until ``stop``."""

    def __init__(self, tracking_uri: str, folder: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (folder / "mlflow-server.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                tracking_uri,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            cwd=folder,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise PageError(f"mlflow server did not answer on {self.url} within 120 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)  # its own session: the server and its workers
            self.process.wait(timeout=30)
        self.log.close()


# ---- the pages ------------------------------------------------------------------------------------


def _close_assistant(browser: Chromium) -> None:
    """The MLflow Assistant panel takes a third of the window; a user can close it too."""
    if browser.evaluate("!!document.querySelector('button[aria-label=Close]')"):
        browser.click("button[aria-label=Close]")


def take_screenshots(browser: Chromium, server: MlflowServer, sweep: Sweep, out: Path) -> list[Path]:
    base = f"{server.url}/#/experiments/{sweep.experiment_id}"
    parent_id, name = sweep.parent.info.run_id, sweep.parent.info.run_name
    # The UI opens in its GenAI view unless told (a toggle kept in the browser, or this parameter).
    ml = "workflowType=machine_learning"
    shots = []

    browser.open(f"{base}/runs/{parent_id}?{ml}")
    browser.wait_for_text(name, "Description", FRONTIER_FILTER, "ε ≤")
    _close_assistant(browser)
    if "Show more" in browser.text():  # the description is folded after a few lines
        browser.click("button, a, span", text="Show more")
    shots.append(out / "mlflow_parent_run.png")
    browser.screenshot(shots[-1])

    browser.open(f"{base}/runs/{parent_id}/artifacts/frontier.png?{ml}")
    browser.wait_for_text("frontier.png", "frontier.csv", "best_per_epsilon.json")
    browser.wait_for(
        "frontier.png's image",
        lambda: browser.evaluate("[...document.images].some(i => i.complete && i.naturalWidth >= 800)"),
    )
    _close_assistant(browser)
    shots.append(out / "mlflow_parent_frontier_png.png")
    browser.screenshot(shots[-1])

    # The runs table, filtered as the README says; the sweep's row expanded to show its frontier runs.
    browser.open(f"{base}/runs?{ml}&searchFilter={urllib.parse.quote(sweep.filter)}")
    browser.wait_for_text("matching runs", name)
    _close_assistant(browser)
    browser.click(".ag-row button.du-bois-light-btn-link")  # the + before the sweep's run
    first = [run.info.run_name for run in sweep.frontier][:5]
    browser.wait_for_text(*first)
    # Columns: off the attributes a sweep leaves empty, on ε, accuracy and the frontier tags.
    browser.click("button", text="Columns")
    for column in (
        "Dataset",
        "Source",
        "Models",
        "epsilon",
        sweep.accuracy,
        "dpsweep.best_for_epsilon",
        "dpsweep.frontier_epochs",
    ):
        browser.click("span", text=column, index=-1)  # the menu's (it comes last), not the table header's
    browser.key("Escape")
    browser.wait_for_text("dpsweep.best_for_epsilon", "dpsweep.frontier_epochs")
    shots.append(out / "mlflow_frontier_runs.png")
    browser.screenshot(shots[-1])

    # Tick the first frontier run, shift-click the last (not the sweep's own run above them:
    # unticking it unticks its children too), and press Compare.
    browser.click(".ag-row input.ag-checkbox-input", index=1)
    browser.click(".ag-row input.ag-checkbox-input", index=-1, shift=True)
    browser.click("button", text="Compare")
    browser.wait_for("the compare page", lambda: "compare-runs" in browser.evaluate("location.href"))
    browser.wait_for_text(f"Comparing {len(sweep.frontier)} Runs", "Parallel Coordinates Plot", sweep.accuracy)
    _close_assistant(browser)
    # ε as a second metric axis, beside the accuracy the UI puts there itself.
    browser.click("input[role=combobox]", index=1)  # the second select: Metrics (the first: Parameters)
    browser.click(".du-bois-light-select-item", text="epsilon")
    browser.evaluate("document.activeElement && document.activeElement.blur()")
    browser.evaluate("window.scrollTo(0, 0)")
    browser.wait_for(
        "ε on the parallel-coordinates plot",
        lambda: (
            "epsilon"
            in browser.evaluate("[...document.querySelectorAll('svg text')].map(t => t.textContent).join(' ')")
        ),
    )
    shots.append(out / "mlflow_compare_parallel.png")
    browser.screenshot(shots[-1])

    browser.click("button, [role=tab]", text="Scatter Plot")
    browser.click("#x-axis-selector")
    browser.click("[role=option]", text="epsilon")
    browser.click("#y-axis-selector")
    browser.click("[role=option]", text=sweep.accuracy)
    browser.wait_for(
        "the ε-vs-accuracy axes",
        lambda: browser.evaluate(
            "document.querySelector('#x-axis-selector').value === 'metric-epsilon' && "
            f"document.querySelector('#y-axis-selector').value === 'metric-{sweep.accuracy}'"
        ),
    )
    browser.evaluate("window.scrollTo(0, 0)")
    time.sleep(1)
    shots.append(out / "mlflow_compare_scatter.png")
    browser.screenshot(shots[-1])
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", help="screenshot the latest sweep of this store (default: run a small one)")
    parser.add_argument("--experiment", default="dpsweep")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go (default: docs/)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--size", default="1400x1000", help="the browser window, WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dpsweep-screenshots-") as scratch:
        folder = Path(scratch)
        server = browser = None
        try:
            uri = args.tracking_uri or run_small_sweep(folder)
            sweep = Sweep(uri, args.experiment)
            print(
                f"sweep {sweep.parent.info.run_name}: {len(sweep.frontier)} run(s) match {FRONTIER_FILTER!r}",
                flush=True,
            )
            server = MlflowServer(uri, folder)
            browser = Chromium(binary=args.chromium, width=width, height=height)
            shots = take_screenshots(browser, server, sweep, args.out)
        except PageError as error:
            print(f"FAILED: {error}", file=sys.stderr)
            if browser is not None:
                failed = Path(tempfile.gettempdir()) / "dpsweep-screenshot-failure.png"
                browser.screenshot(failed, check=False)
                print(f"the page as it was: {failed}", file=sys.stderr)
            return 1
        finally:
            if browser is not None:
                browser.close()
            if server is not None:
                server.stop()
    for path in shots:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
