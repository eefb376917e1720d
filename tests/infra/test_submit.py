"""sweeps.driver.submit without a cluster: what a job is made of, and bad input stopped before submitting.

The real submission, to a real two-node cluster, is tests/infra/test_ray_cluster.py.
"""

from __future__ import annotations

import asyncio
import io
import shlex
from pathlib import Path

import pytest

from sweeps.driver import submit


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``python -m sweeps.submit ARGS`` in this process: (exit code, stderr)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)

    def run(*args: str) -> tuple[int, str]:
        code = submit.main(list(args))
        return code, capsys.readouterr().err

    return run


def test_entrypoint_is_the_launcher_with_the_options_passed_through() -> None:
    command = submit.job_entrypoint(
        space="digits quick.yaml",
        tracking_uri="http://mlflow:5000",
        results_dir="/mnt/dpsweep/results",
        experiment="team a",
    )
    assert shlex.split(command) == [
        "python",
        "-m",
        "sweeps.launch",
        "--space",
        "digits quick.yaml",
        "--tracking-uri",
        "http://mlflow:5000",
        "--results-dir",
        "/mnt/dpsweep/results",
        "--experiment",
        "team a",
    ]


def test_the_job_waits_for_the_autoscaler_by_default_and_the_launcher_takes_the_option() -> None:
    from sweeps.launch import build_parser

    args = submit.build_parser().parse_args(["--space", "cifar10_grid", "--tracking-uri", "http://mlflow:5000"])
    assert args.wait_for_resources == submit.DEFAULT_WAIT_FOR_RESOURCES > 0
    command = submit.job_entrypoint(
        space="cifar10_grid",
        tracking_uri="http://mlflow:5000",
        results_dir="/mnt/dpsweep/results",
        experiment="dpsweep",
        wait_for_resources=900,
    )
    words = shlex.split(command)
    assert words[-2:] == ["--wait-for-resources", "900"]
    assert build_parser().parse_args(words[3:]).wait_for_resources == 900


def test_a_shipped_space_uploads_the_project_root_without_local_results() -> None:
    with submit.job_runtime_env(submit._space_file("digits_quick")) as (runtime_env, space_in_job):
        assert space_in_job is None  # the name works as it is: the space ships with the project
        assert runtime_env["working_dir"] == str(submit.PROJECT_ROOT)
        assert {".git", "mlflow.db", "dpsweep_results", "mlruns", "*.pt"} <= set(runtime_env["excludes"])


def test_a_space_file_inside_the_project_is_named_relative_to_it() -> None:
    shipped = submit.PROJECT_ROOT / "search_spaces" / "digits_grid.yaml"
    with submit.job_runtime_env(submit._space_file(str(shipped))) as (runtime_env, space_in_job):
        assert runtime_env["working_dir"] == str(submit.PROJECT_ROOT)
        assert space_in_job == "search_spaces/digits_grid.yaml"


def test_a_space_file_from_elsewhere_travels_in_a_copy_of_the_project(tmp_path: Path) -> None:
    space = tmp_path / "mine.yaml"
    space.write_text(
        (submit.PROJECT_ROOT / "search_spaces" / "digits_quick.yaml")
        .read_text()
        .replace("name: digits_quick", "name: mine")
    )
    with submit.job_runtime_env(submit._space_file(str(space))) as (runtime_env, space_in_job):
        stage = Path(runtime_env["working_dir"])
        assert (stage / space_in_job).read_text() == space.read_text()
        for needed in ("pyproject.toml", "dp_core/train.py", "sweeps/launch.py", "search_spaces/digits_quick.yaml"):
            assert (stage / needed).is_file(), needed
        assert not (stage / ".git").exists() and not list(stage.rglob("__pycache__"))
    assert not stage.exists()  # removed once Ray has uploaded it


def test_a_space_with_its_own_model_and_data_travels_with_its_code_and_without_its_data(tmp_path: Path) -> None:
    from sweeps.space import load_space
    from tests._own_data import write_npz

    folder = tmp_path / "mine"
    folder.mkdir()
    write_npz(folder / "d.npz")
    (folder / "submit_net.py").write_text(
        "import math\nimport torch.nn as nn\n\n\ndef build(*, input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Linear(math.prod(input_shape), num_classes))\n"
    )
    (folder / "own.yaml").write_text(
        "fixed:\n  dataset: {format: npz, path: d.npz, classes: 10}\n  model: 'submit_net:build'\n"
        "  batch_size: 32\n  epochs: 1\n  delta: 1.0e-3\naxes: {noise_multiplier: [1.0]}\nsearch: grid\n"
    )
    with submit.job_runtime_env(submit._space_file(str(folder / "own.yaml"))) as (runtime_env, space_in_job):
        stage = Path(runtime_env["working_dir"])
        staged = load_space(stage / space_in_job)  # the head reads it from the copy: it finds code and data
        assert staged.code == (str((stage / ".dpsweep_job_spaces" / "own_code0").resolve()),)
        assert (stage / ".dpsweep_job_spaces" / "own_code0" / "submit_net.py").is_file()
        assert staged.fixed["dataset"]["path"] == str(folder / "d.npz")
        assert not list(stage.rglob("*.npz"))  # the data is read where it is, never uploaded
        assert "*.npz" in runtime_env["excludes"]


def test_a_python_loader_travels_as_code_and_is_imported_from_the_copy(tmp_path: Path) -> None:
    from sweeps.space import load_space
    from tests._own_data import write_loader

    loader = write_loader(tmp_path, module="submit_loader")
    (tmp_path / "loaded.yaml").write_text(
        f"fixed:\n  dataset: {{format: python, loader: '{loader}', classes: 10}}\n  model: mlp\n"
        "  batch_size: 32\n  epochs: 1\n  delta: 1.0e-3\naxes: {noise_multiplier: [1.0]}\nsearch: grid\n"
    )
    with submit.job_runtime_env(submit._space_file(str(tmp_path / "loaded.yaml"))) as (runtime_env, space_in_job):
        stage = Path(runtime_env["working_dir"])
        code = stage / ".dpsweep_job_spaces" / "loaded_code0"
        assert (code / "submit_loader.py").is_file()
        staged = load_space(stage / space_in_job)
        assert staged.code == (str(code.resolve()),)
        assert staged.fixed["dataset"]["loader_dir"] == str(code.resolve())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--space", "digits_quick"], "Expected --tracking-uri"),
        (["--space", "digits_quick", "--tracking-uri", "sqlite:///mlflow.db"], "relative path"),
        (
            ["--space", "digits_quick", "--tracking-uri", "http://m:5000", "--results-dir", "results"],
            "Expected --results-dir to be an absolute path",
        ),
        (["--space", "no_such_space", "--tracking-uri", "http://m:5000"], "Known spaces: "),
        (
            ["--space", "digits_quick", "--tracking-uri", "http://sweeper:hunter2-secret@m:5000"],
            "Expected --tracking-uri without a user or password",
        ),
    ],
)
def test_bad_input_stops_before_the_cluster_is_contacted(cli, args: list[str], message: str) -> None:
    # Nothing listens on port 9 of loopback: reaching the connection step would say so instead.
    code, stderr = cli(*args, "--address", "http://127.0.0.1:9")
    assert code == 2 and message in stderr, stderr
    assert "Cannot reach" not in stderr and "hunter2-secret" not in stderr


def test_a_job_carries_no_mlflow_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray writes a job's runtime_env (env_vars too) to the head's runtime_env_agent.log and returns
    # it with the job's info, and logs its entrypoint: the head signs in with its own account.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "sweeper")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-secret")
    with submit.job_runtime_env(submit._space_file("digits_quick")) as (runtime_env, _):
        entrypoint = submit.job_entrypoint(
            space="digits_quick",
            tracking_uri="http://mlflow:5000",
            results_dir="/mnt/dpsweep/results",
            experiment="dpsweep",
        )
        assert runtime_env["env_vars"] == {"PYTHONUNBUFFERED": "1"}
        assert "hunter2-secret" not in repr(runtime_env) + entrypoint and "sweeper" not in repr(runtime_env)


def test_an_unreachable_cluster_is_reported_with_its_address(cli) -> None:
    code, stderr = cli("--space", "digits_quick", "--tracking-uri", "http://m:5000", "--address", "http://127.0.0.1:9")
    assert code == 2 and "Cannot reach the Ray Job API at http://127.0.0.1:9" in stderr, stderr


class _Status(str):
    def is_terminal(self) -> bool:
        return self in ("SUCCEEDED", "FAILED", "STOPPED")


class _ClosingLogStream:
    """A Job API whose log stream ends early (a dashboard restart) while the job still runs."""

    def __init__(self) -> None:
        self.statuses = [_Status("RUNNING"), _Status("RUNNING"), _Status("SUCCEEDED")]

    async def tail_job_logs(self, job_id: str):
        yield "epoch 1\n"
        await asyncio.sleep(0)
        raise RuntimeError("Unexpected error while tailing logs")

    def get_job_status(self, job_id: str) -> _Status:
        return self.statuses.pop(0)


def test_follow_waits_for_the_job_when_the_log_stream_closes_early() -> None:
    out = io.StringIO()
    status = submit.follow(_ClosingLogStream(), "raysubmit_x", out=out, poll_seconds=0)
    assert status == "SUCCEEDED"
    assert out.getvalue().startswith("epoch 1\n") and "log stream closed" in out.getvalue()
