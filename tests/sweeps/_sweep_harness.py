"""The real stack for fault tests: a shared local Ray cluster, an MLflow server behind a cuttable
TCP proxy, and ``python -m sweeps.launch`` run as a user runs it.

Nothing here is a mock: the cluster is ``ray start``, the server is ``mlflow server``, the proxy
forwards real bytes. Faults are injected by the tests at states they poll for, never after a
sleep; this module gives them the handles (the cluster's trial workers, the proxy's ``cut``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
# RAY_AUTH_MODE: the test cluster listens on this machine only; a token auth mode picked up from a
# token file some earlier local Ray left in ~/.ray would make the launcher's ray.init fail.
# OMP_NUM_THREADS: Ray would give a 2-CPU trial two torch threads, and on a 2-core machine that other
# jobs share, spinning threads made a pack's epochs 10-20x slower than on one thread.
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "PYTHONUNBUFFERED": "1",
    "RAY_AUTH_MODE": "disabled",
    "OMP_NUM_THREADS": "1",
}

__all__ = ["ENV", "ROOT", "Launch", "MlflowServer", "RayCluster", "TcpProxy", "free_port", "wait_for"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.25) -> None:
    """Poll ``predicate`` until it holds; a predicate that raises counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001, S110 - e.g. a store not created yet, a database briefly locked
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _session_processes(session: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(process.pid) == session:
                found.append(process)
    return found


def _kill_session(session: int) -> None:
    """SIGKILL every process of one session this harness started (``start_new_session``)."""
    for process in _session_processes(session):
        with contextlib.suppress(psutil.Error):
            process.kill()


# ---- Ray -------------------------------------------------------------------------------------------

#: Ray processes of a cluster that belong to no job: its agents and its pool of idle workers.
_IDLE_RAY_PROCESSES = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")


class RayCluster:
    """One local Ray head (``ray start``) shared by many sweeps, run in its own process session.

    Sweeps reach it with ``--address``; their trial workers are its processes, not the
    launcher's, so ``trial_workers`` and ``job_processes`` look them up in the session.
    """

    def __init__(self, *, num_cpus: int = 2, env: dict[str, str] | None = None) -> None:
        self.num_cpus = num_cpus
        self.env = {**ENV, **(env or {})}  # the cluster's, and so its trial workers' (e.g. a test hook's)
        self.address = ""
        self._session: int | None = None
        self._temp_dir: Path | None = None

    def start(self) -> None:
        # A short path: Ray's unix sockets live under it.
        self._temp_dir = Path(tempfile.mkdtemp(prefix="rayfm-", dir="/tmp"))
        command = [
            "ray",
            "start",
            "--head",
            "--num-cpus",
            str(self.num_cpus),
            "--port",
            str(free_port()),
            "--ray-client-server-port",
            str(free_port()),
            "--disable-usage-stats",
            "--include-dashboard",
            "false",
            "--object-store-memory",
            str(200 * 1024**2),
            "--temp-dir",
            str(self._temp_dir),
        ]
        started = subprocess.Popen(
            command, env=self.env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        output, _ = started.communicate(timeout=180)
        self._session = started.pid  # the session `ray start` opened: every process of the cluster
        found = re.search(r"ray start --address='([^']+)'", output)
        assert started.returncode == 0 and found, output
        self.address = found.group(1)

    def alive(self) -> bool:
        return self._session is not None and any("gcs_server" in " ".join(p.cmdline()) for p in self._processes())

    def ensure_running(self) -> None:
        """Start the cluster, or start it again if its processes are gone (another job on this
        machine may have run ``ray stop``)."""
        if not self.alive():
            self.stop()
            self.start()

    def _processes(self) -> list[psutil.Process]:
        return _session_processes(self._session) if self._session is not None else []

    def job_processes(self) -> list[psutil.Process]:
        """Processes working for some sweep: trial workers, client actors, Optuna's asker."""
        busy = []
        for process in self._processes():
            with contextlib.suppress(psutil.Error):
                title = " ".join(process.cmdline())
                if title.startswith("ray::") and not title.startswith(_IDLE_RAY_PROCESSES):
                    busy.append(process)
        return busy

    def trial_workers(self) -> list[psutil.Process]:
        """The processes of Ray Tune trials (function trainables run as ``ImplicitFunc`` actors)."""
        workers = []
        for process in self.job_processes():
            with contextlib.suppress(psutil.Error):
                if "ImplicitFunc" in " ".join(process.cmdline()):
                    workers.append(process)
        return workers

    def wait_idle(self, *, timeout: float = 90) -> None:
        wait_for(
            lambda: not self.job_processes(),
            timeout=timeout,
            what=f"the Ray cluster's job processes to end: {self._describe()}",
        )

    def _describe(self) -> str:
        names = []
        for process in self.job_processes():
            with contextlib.suppress(psutil.Error):
                names.append(f"{process.pid} {process.cmdline()[0]}")
        return ", ".join(names) or "none"

    def stop(self) -> None:
        if self._session is not None:
            _kill_session(self._session)
            self._session = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


# ---- MLflow ----------------------------------------------------------------------------------------


class MlflowServer:
    """A real ``mlflow server`` (sqlite backend, proxied artifacts) on a free loopback port."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.store}/server.db",
                "--artifacts-destination",
                str(self.store / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            # No job runner: sweeps run no MLflow jobs, and it leaves a folder in /dev/shm per server.
            cwd=self.store,
            env={**ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(
            lambda: MlflowClient(tracking_uri=self.uri).search_experiments() is not None,
            timeout=120,
            what="the MLflow server to answer",
            interval=0.5,
        )

    def stop(self) -> None:
        if self._process is not None:
            _kill_session(self._process.pid)
            self._process.wait(timeout=30)
            self._process = None


class TcpProxy:
    """Forwards a loopback port to ``target_port`` byte for byte, until ``cut``.

    ``cut`` closes every open connection and the listening socket, so that new connections are
    refused, as when a server's host goes away; ``restore`` listens on the same port again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    start = restore

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            listener.close()
        with self._lock:
            doomed, self._open = list(self._open), set()
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            with self._lock:
                self._open.discard(source)
            source.close()


# ---- the launcher ----------------------------------------------------------------------------------


class Launch:
    """One ``python -m sweeps.launch`` process, in its own session, its output in a log file."""

    def __init__(self, arguments: Sequence[str], *, cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "w") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sweeps.launch", *arguments],
                cwd=cwd,
                env={**ENV, **(env or {})},
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, *, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the launcher ran past {timeout:g} s:\n{self.output()[-4000:]}") from None

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the launcher and whatever it started itself (e.g. a planning pool)."""
        _kill_session(self.process.pid)
        self.process.wait(timeout=30)


@contextlib.contextmanager
def launched(arguments: Sequence[str], *, cwd: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[Launch]:
    """A launch that is killed, with its session, if the test leaves it running."""
    launch = Launch(arguments, cwd=cwd, log=log, env=env)
    try:
        yield launch
    finally:
        if launch.running():
            launch.kill()
        else:
            _kill_session(launch.pid)  # leftovers of a killed launcher's own children
