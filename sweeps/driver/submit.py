"""``python -m sweeps.submit --space NAME --address http://HEAD:8265``: run a sweep as a Ray Job.

The job's entrypoint is ``python -m sweeps.launch`` on the cluster's head node, unchanged; its
runtime environment is this project, uploaded as the job's working directory, so the cluster
runs exactly the code that submitted it. The nodes bring the dependencies: the image built from
``infra/docker/Dockerfile``, or the cluster launcher's setup commands, install them from
``pyproject.toml``. A space's own code (``model: "module:function"`` beside it) travels in the
job's copy and on to the workers as Ray's ``py_modules``; its own data never does (the head reads
it by path). This module streams the job's logs, prints its id and exits with the job's
outcome (0 succeeded, 1 failed or stopped, 2 bad input, here or found by the launcher on the head
before anything ran, 130 stopped following with Ctrl-C).

The sweep's driver runs on the head node, so the tracking URI must name a store the head can
reach (an MLflow server), and the results folder a path every node can reach: Ray Tune's trial
state and checkpoints are written there by the nodes that run the trials.

The MLflow account is the head's own (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
in its environment, or MLflow's ``~/.mlflow/credentials`` there; infra/README.md), and the job
carries none: Ray 2.60 writes a job's runtime environment, ``env_vars`` included, in plain text to
the head's ``runtime_env_agent.log`` and returns it with the job's info, and it logs the
entrypoint. A tracking URI with a user or password in it is refused for the same reason. If the
head's account is missing or refused, the launcher stops there before Ray Tune starts, and this
command exits 2 with its message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from dp_core.config import ConfigError

__all__ = ["main", "submit", "follow", "job_entrypoint", "job_runtime_env", "PROJECT_ROOT", "EXCLUDES"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Never uploaded with the job: local results, local tracking stores, caches, checkpoints. Ray
# also honours the project's .gitignore.
EXCLUDES = (
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".benchmarks",
    ".import_linter_cache",
    "dpsweep_results",
    "mlflow.db",
    "mlruns",
    "mlartifacts",
    "*.pt",
    "build",
    "dist",
    # Data never travels with the code: an own dataset reaches the trials from the driver (Ray's
    # object store), read where the space names it: the cluster's shared volume.
    "*.npz",
    "*.npy",
    "*.parquet",
    "*.csv",
    "*.pkl",
)
# Where a space file from outside the project travels inside the job's working directory.
_JOB_SPACES = ".dpsweep_job_spaces"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# The shared volume of the clusters in infra/ (EFS on AWS, a ReadWriteMany volume on Kubernetes).
DEFAULT_RESULTS_DIR = "/mnt/dpsweep/results"
#: The infra/ clusters autoscale from no GPU workers: the sweep waits this long for the first node
#: that can hold a trial (sweeps.driver.resources) before it gives up with exit 2.
DEFAULT_WAIT_FOR_RESOURCES = 900.0
# MLflow's credential variables: the head's own, never put in a job (see the module docstring).
_MLFLOW_ACCOUNT = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps.submit", description=__doc__.splitlines()[0])
    parser.add_argument("--space", required=True, help="a shipped space name or a path to a .yaml file")
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_ADDRESS,
        help=f"the cluster's dashboard (Job API) address (default: $RAY_API_SERVER_ADDRESS or {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI as the head node sees it (default: $MLFLOW_TRACKING_URI)",
    )
    parser.add_argument(
        "--results-dir",
        default=DEFAULT_RESULTS_DIR,
        help=f"Ray Tune's trial state, on a path every node can reach (default: {DEFAULT_RESULTS_DIR})",
    )
    parser.add_argument("--experiment", default="dpsweep", help="MLflow experiment name (default: dpsweep)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return without following the job")
    parser.add_argument(
        "--wait-for-resources",
        type=float,
        default=DEFAULT_WAIT_FOR_RESOURCES,
        metavar="SECONDS",
        help="how long the sweep waits for the autoscaler to add a node that can hold one trial "
        f"(default: {DEFAULT_WAIT_FOR_RESOURCES:g}; 0 for a fixed cluster: fail at once)",
    )
    return parser


def _check_tracking_uri(uri: str | None) -> str:
    if not uri:
        raise ConfigError(
            "Expected --tracking-uri (or MLFLOW_TRACKING_URI) to name a tracking store the head node can reach, "
            "such as http://MLFLOW_HOST:5000, but got none: the job's default store would be a sqlite file in "
            "its temporary working directory, gone when the job ends."
        )
    parsed = urlparse(uri)
    if parsed.username or parsed.password:
        raise ConfigError(
            "Expected --tracking-uri without a user or password before the host, but got one: the job's entrypoint "
            "is logged on the cluster. The head signs in with its own MLflow account (MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD on the head; infra/README.md)."
        )
    # sqlite:////abs/path is absolute (the path part starts with //), sqlite:///rel/path is not.
    relative = (parsed.scheme == "sqlite" and not parsed.path.startswith("//")) or (
        parsed.scheme in ("", "file") and not Path(parsed.path).is_absolute()
    )
    if relative:
        raise ConfigError(
            f"Expected --tracking-uri to be a server URL or an absolute path on the head node, but got {uri!r}: "
            "a relative path would land in the job's temporary working directory."
        )
    return uri


def _check_results_dir(results_dir: str) -> str:
    if not Path(results_dir).is_absolute():
        raise ConfigError(
            f"Expected --results-dir to be an absolute path that every node of the cluster can reach (a shared "
            f"filesystem such as {DEFAULT_RESULTS_DIR}), but got {results_dir!r}."
        )
    return results_dir


def _space_file(space: str) -> Path | None:
    """The local file ``--space`` names, or None for a shipped space name (validated on the way)."""
    from sweeps.space import load_space

    loaded = load_space(space)  # bad input stops here, before anything reaches the cluster
    shipped = loaded.source.parent.resolve() == (PROJECT_ROOT / "search_spaces").resolve()
    return None if shipped and loaded.source.stem == space else loaded.source


def job_entrypoint(
    *, space: str, tracking_uri: str, results_dir: str, experiment: str, wait_for_resources: float | None = None
) -> str:
    """The shell command the job runs on the head node, in the project's working directory."""
    command = [
        "python",
        "-m",
        "sweeps.launch",
        "--space",
        space,
        "--tracking-uri",
        tracking_uri,
        "--results-dir",
        results_dir,
        "--experiment",
        experiment,
    ]
    if wait_for_resources:
        command += ["--wait-for-resources", f"{wait_for_resources:g}"]
    return shlex.join(command)


@contextmanager
def job_runtime_env(space_file: Path | None) -> Iterator[tuple[dict[str, Any], str | None]]:
    """The job's runtime environment and the ``--space`` argument it should use.

    The working directory is the project root. A space file from outside the project is not in
    it, so then the project is copied, with the file, into a temporary folder that is uploaded
    instead (Ray uploads the folder during ``submit_job``; the copy is removed afterwards). A
    space that brings its own code or data travels so too, wherever it is, rewritten to find them
    from the copy: its code folders' modules copied beside it (the launcher on the head ships them
    on to the workers, sweeps.driver.user_code), its dataset's files named by absolute path (the
    data itself is never uploaded: the head reads it where the cluster's nodes see it).
    """
    env: dict[str, Any] = {"excludes": list(EXCLUDES), "env_vars": {"PYTHONUNBUFFERED": "1"}}
    if space_file is None:
        yield {**env, "working_dir": str(PROJECT_ROOT)}, None
        return
    space_file = space_file.resolve()
    brings_own = _brings_own(space_file)
    if space_file.is_relative_to(PROJECT_ROOT) and not brings_own:
        yield {**env, "working_dir": str(PROJECT_ROOT)}, space_file.relative_to(PROJECT_ROOT).as_posix()
        return
    with tempfile.TemporaryDirectory(prefix="dpsweep-job-") as folder:
        stage = Path(folder) / "dpsweep"
        shutil.copytree(PROJECT_ROOT, stage, ignore=shutil.ignore_patterns(*EXCLUDES), symlinks=True)
        (stage / _JOB_SPACES).mkdir(exist_ok=True)
        if brings_own:
            _stage_own(space_file, stage / _JOB_SPACES)
        else:
            shutil.copy2(space_file, stage / _JOB_SPACES / space_file.name)
        yield {**env, "working_dir": str(stage)}, f"{_JOB_SPACES}/{space_file.name}"


def _brings_own(space_file: Path) -> bool:
    """Whether the space names code of its own (code folders) or an own dataset (a mapping)."""
    from sweeps.space import load_space

    loaded = load_space(space_file)
    return bool(loaded.code) or isinstance(loaded.fixed.get("dataset"), dict)


def _stage_own(space_file: Path, folder: Path) -> None:
    """Write ``space_file`` into ``folder`` with its code copied to ``<stem>_code<k>`` beside it and its
    dataset's paths absolute (as the space was read here)."""
    import yaml

    from sweeps.driver.user_code import DATA_EXCLUDES, modules_of
    from sweeps.space import load_space

    loaded = load_space(space_file)
    raw = yaml.safe_load(space_file.read_text())
    dataset = dict(loaded.fixed["dataset"]) if isinstance(loaded.fixed.get("dataset"), dict) else None
    staged: list[str] = []
    if loaded.code:
        for index, code_folder in enumerate(loaded.code):
            target = folder / f"{space_file.stem}_code{index}"
            target.mkdir()
            for module in modules_of([code_folder]):
                if module.is_dir():
                    shutil.copytree(module, target / module.name, ignore=shutil.ignore_patterns(*DATA_EXCLUDES))
                else:
                    shutil.copy2(module, target / module.name)
            staged.append(target.name)
        raw["code"] = staged
    if dataset is not None:
        if dataset.get("loader_dir") in loaded.code:  # a python loader's module: its staged copy, beside the file
            dataset["loader_dir"] = staged[loaded.code.index(dataset["loader_dir"])]
        raw["fixed"]["dataset"] = dataset
    (folder / space_file.name).write_text(yaml.safe_dump(raw, sort_keys=False))


def submit(
    client: Any,
    *,
    space: str,
    tracking_uri: str,
    results_dir: str,
    experiment: str,
    wait_for_resources: float | None = None,
) -> str:
    """Submit the sweep as a Ray Job on ``client``'s cluster; returns the job id."""
    with job_runtime_env(_space_file(space)) as (runtime_env, space_in_job):
        entrypoint = job_entrypoint(
            space=space_in_job or space,
            tracking_uri=tracking_uri,
            results_dir=results_dir,
            experiment=experiment,
            wait_for_resources=wait_for_resources,
        )
        return client.submit_job(
            entrypoint=entrypoint,
            runtime_env=runtime_env,
            metadata={"dpsweep.space": Path(space).stem, "dpsweep.experiment": experiment},
        )


async def _tail(client: Any, job_id: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def follow(client: Any, job_id: str, *, out: TextIO = sys.stdout, poll_seconds: float = 2.0) -> Any:
    """Stream the job's logs to ``out`` until it ends; returns its final ``JobStatus``."""
    try:
        asyncio.run(_tail(client, job_id, out))
    except RuntimeError as error:
        # The log stream can close before the job ends (a dashboard restart); the status decides.
        print(f"(log stream closed: {error}; waiting for the job to end)", file=out, flush=True)
    status = client.get_job_status(job_id)
    while not status.is_terminal():
        time.sleep(poll_seconds)
        status = client.get_job_status(job_id)
    return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tracking_uri = _check_tracking_uri(args.tracking_uri)
        results_dir = _check_results_dir(args.results_dir)
        _space_file(args.space)  # a bad space stops here, before the cluster is contacted
        from ray.job_submission import JobStatus, JobSubmissionClient

        try:
            client = JobSubmissionClient(args.address)
        except (ConnectionError, RuntimeError) as error:
            raise ConfigError(f"Cannot reach the Ray Job API at {args.address}: {error}") from None
        job_id = submit(
            client,
            space=args.space,
            tracking_uri=tracking_uri,
            results_dir=results_dir,
            experiment=args.experiment,
            wait_for_resources=args.wait_for_resources,
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"submitted job {job_id} to {args.address}", flush=True)
    if any(os.environ.get(name) for name in _MLFLOW_ACCOUNT):
        print(
            "note: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD of this shell are not sent with the "
            "job (Ray logs a job's runtime environment); the sweep signs in to MLflow with the head's own "
            "account (infra/README.md).",
            file=sys.stderr,
            flush=True,
        )
    if args.no_wait:
        print(f"follow it with: ray job logs --address {args.address} --follow {job_id}")
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; job {job_id} keeps running. Stop it with: "
            f"ray job stop --address {args.address} {job_id}",
            file=sys.stderr,
        )
        return 130
    info = client.get_job_info(job_id)
    print(f"job {job_id}: {status}" + (f" ({info.message})" if status != JobStatus.SUCCEEDED and info.message else ""))
    if status == JobStatus.SUCCEEDED:
        return 0
    # The launcher's 2: bad input it found on the head (a refused MLflow account) before anything ran.
    return 2 if getattr(info, "driver_exit_code", None) == 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
