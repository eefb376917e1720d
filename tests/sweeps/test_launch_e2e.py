"""End to end: `python -m sweeps.launch` on real local Ray with a real sqlite MLflow store."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

from dp_core.config import TrainConfig
from dp_core.data import load_data
from sweeps.privacy import sweep_secret
from sweeps.results.frontier import Point, pareto_front
from sweeps.results.released_model import bound_alias
from sweeps.space import load_space
from tests._mlflow_store import empty_sqlite_store
from tests.sweeps._sweep_harness import ENV, RayCluster, launched, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# One slot (a trial takes both of --num-cpus 2), so trials run in grid order and pruning is deterministic:
# trial_0001 (lr 0.001) reaches the first rung behind trial_0000 (lr 2), same ε band.
TINY_SPACE = """
name: {name}
description: tiny end-to-end sweep
fixed:
  dataset: digits
  model: mlp
  batch_size: 256
  epochs: 4
  delta: 1.0e-5
  accountant: rdp
axes:
  noise_multiplier: [1.5, 0.3]
  lr: [2.0, 0.001]
epsilon_budget: 6.0
search: grid
pruner: asha
resources: {{cpus: 2, gpus: 0}}
confirm: {{top: 1, seeds: 2}}
"""


def _launch(
    tmp_path: Path, *args: str, timeout: float = 600, cluster: RayCluster | None = None
) -> subprocess.CompletedProcess:
    # --num-cpus 2, or the session's cluster of 2 CPUs: the slots (and so which trials ASHA prunes) of
    # a 2-core machine, on any machine.
    ray = ["--address", cluster.address] if cluster is not None else ["--num-cpus", "2"]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.launch",
            *args,
            *ray,
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--results-dir",
            str(tmp_path / "results"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**ENV, "PYTHONPATH": str(ROOT)} if cluster is not None else {**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _runs(tmp_path: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("dpsweep")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dpsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("dpsweep.role") == "trial"]
    return client, parents, children


def _assert_no_seed_released(tmp_path: Path, client: MlflowClient, parent, children, console: str) -> None:
    """The sweep's secret root and every trial seed derived from it stay in the results folder:
    no MLflow param, tag, metric or artifact, no run name and no console line holds one."""
    sweep_dir = next(p for p in (tmp_path / "results").iterdir() if p.is_dir())
    secret_file = sweep_dir / sweep_secret.SECRET_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600 and stat.S_IMODE(sweep_dir.stat().st_mode) == 0o700
    root = sweep_secret.read(sweep_dir)
    space = load_space(str(tmp_path / f"{parent.data.params['space']}.yaml")).with_secret_seed(root)
    secrets_ = {str(root), *(str(space.trial_seed(i)) for i in range(len(children)))}
    released = [console]
    for run in (parent, *children):
        released += [
            run.info.run_name,
            *map(str, run.data.params.items()),
            *map(str, run.data.tags.items()),
            *(f"{k}={v!r}" for k, v in run.data.metrics.items()),
        ]
        for artifact in client.list_artifacts(run.info.run_id):
            local = client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path / "downloaded"))
            if not Path(local).is_dir():
                released.append(Path(local).read_bytes().decode("latin-1"))
    assert "seed" not in {key for run in children for key in run.data.params}
    leaked = [secret for secret in secrets_ if any(secret in text for text in released)]
    assert not leaked, f"seeds released: {leaked}"


def test_tiny_sweep_logs_trials_skips_prunes_and_the_exact_frontier(tmp_path: Path, ray_cluster: RayCluster) -> None:
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(name="tiny"))
    launched_ms = int(time.time() * 1000)
    done = _launch(tmp_path, "--space", str(space), cluster=ray_cluster)
    returned_ms = int(time.time() * 1000)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 skipped over budget (trial_0002, trial_0003)" in done.stdout  # σ = 0.3 is far over an ε budget of 6
    assert "frontier" in done.stdout and "RDP" in done.stdout
    assert " on 1 slots" in done.stdout  # --num-cpus 2, 2 CPUs a trial: one at a time on any machine

    client, parents, children = _runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["epsilon_budget"] == "6.0" and parent.data.params["accountant"] == "rdp"
    assert "version.opacus" in parent.data.params
    assert len(children) == 4  # one child run per grid point, skipped ones included
    _assert_no_seed_released(tmp_path, client, parent, children, done.stdout + done.stderr)

    outcomes = {c.info.run_name: c.data.tags["dpsweep.outcome"] for c in children}
    assert outcomes["trial_0002"] == outcomes["trial_0003"] == "skipped_over_budget"
    assert outcomes["trial_0000"] == "completed"
    assert outcomes["trial_0001"] == "pruned"
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["max_grad_norm"] and child.data.params["noise_multiplier"]
        if outcomes[child.info.run_name] == "skipped_over_budget":
            assert child.data.metrics["planned_epsilon"] > 6.0
            assert not client.get_metric_history(child.info.run_id, "val_accuracy")  # never trained

    # Every logged ε is within the budget, per epoch.
    points = []
    for child in children:
        accuracy = client.get_metric_history(child.info.run_id, "val_accuracy")
        epsilon = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "epsilon")}
        assert all(value <= 6.0 for value in epsilon.values())
        if outcomes[child.info.run_name] == "completed":
            assert [m.step for m in accuracy] == [1, 2, 3, 4]
        for m in accuracy:
            points.append(
                Point(
                    epsilon=epsilon[m.step],
                    accuracy=m.value,
                    run_id=child.info.run_id,
                    trial=child.info.run_name,
                    epoch=m.step,
                )
            )

    # The frontier artifact is exactly the Pareto set of the logged points.
    folder = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "artifacts")))
    assert {"frontier.csv", "frontier.png", "best_per_epsilon.json"} <= {p.name for p in folder.iterdir()}
    with open(folder / "frontier.csv") as handle:
        all_rows = list(csv.DictReader(handle))
    rows = [r for r in all_rows if r["kind"] == "search"]
    assert len(rows) == len(points)
    # Row for row the logged points (the launcher takes them from what it logged, not read back),
    # with each run's params as MLflow holds them.
    assert {
        (r["run_id"], r["trial"], int(r["epoch"]), float(r["epsilon"]), float(r["val_accuracy"])) for r in rows
    } == {(p.run_id, p.trial, p.epoch, p.epsilon, p.accuracy) for p in points}
    params = {c.info.run_id: c.data.params for c in children}
    for row in rows:
        assert {k: row[k] for k in params[row["run_id"]]} == params[row["run_id"]]
    on_front = {(r["run_id"], int(r["epoch"])) for r in rows if r["on_frontier"] == "true"}
    assert on_front == {(p.run_id, p.epoch) for p in pareto_front(points)}
    assert (folder / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert parent.data.metrics["train_share"] > 0

    # The confirmation stage: the leading trials of each ε bound retrained with fresh seeds, each run
    # a child run measured on validation and test at its epoch.
    # Then each bound's chosen configuration is refit, trained as often again on train + validation.
    stage_runs = [
        r
        for r in client.search_runs([parent.info.experiment_id])
        if r.data.tags.get("dpsweep.role") in ("confirmation", "refit")
    ]
    confirmations = [r for r in stage_runs if r.data.tags["dpsweep.role"] == "confirmation"]
    refits = [r for r in stage_runs if r.data.tags["dpsweep.role"] == "refit"]
    confirmed = [r for r in all_rows if r["kind"] == "confirmed"]
    assert confirmations and refits and confirmed
    assert sorted(i for r in confirmed for i in r["run_id"].split()) == sorted(r.info.run_id for r in stage_runs)
    for run in confirmations:
        assert {"val_accuracy", "test_accuracy", "epsilon"} <= set(run.data.metrics)
        assert run.data.tags["dpsweep.confirms"] in {*outcomes, "defaults"} and "seed" not in run.data.params
    # The trainer's defaults (lr 2 is on the lr axis, C 0.5 is not searched) confirmed beside the
    # nominees at every bound, shown beside the choice.
    baseline = [r for r in confirmations if r.data.tags["dpsweep.confirms"] == "defaults"]
    assert baseline and {(r.data.params["lr"], r.data.params["max_grad_norm"]) for r in baseline} == {("2.0", "0.5")}
    assert "defaults val" in done.stdout
    for run in refits:  # no validation split is left to measure
        assert {"test_accuracy", "epsilon"} <= set(run.data.metrics) and "val_accuracy" not in run.data.metrics
        assert run.data.params["validation_fraction"] == "0.0" and "seed" not in run.data.params
    best = json.loads((folder / "best_per_epsilon.json").read_text())
    chosen = [b for b in best if b["test_accuracy_mean"] is not None]
    assert chosen and all(b["confirmed"] and b["seeds"] == 2 and b["epsilon"] <= b["epsilon_at_most"] for b in chosen)
    assert all(
        b["trained_on"] == "train+validation" and b["train_config"]["validation_fraction"] == 0.0 for b in chosen
    )
    assert len(refits) == 2 * len({(b["trial"], b["epoch"], b["epsilon_at_most"]) for b in chosen})
    assert "test acc" in done.stdout and " ± " in done.stdout and "refit" in done.stdout
    _assert_no_seed_released(tmp_path, client, parent, stage_runs, done.stdout + done.stderr)
    _assert_stages_print_one_line_each(done.stdout)
    _assert_runs_span_their_training(client, children, stage_runs, launched_ms, returned_ms)
    _assert_each_bound_has_its_model(tmp_path, client, best, refits)


def _assert_stages_print_one_line_each(stdout: str) -> None:
    """Without a terminal the confirmation and the refit stage print one summary line each, and
    a plain line per 30 s they run (none, on a quiet machine), not a line per finished unit."""
    lines = stdout.splitlines()
    search_over = next(i for i, line in enumerate(lines) if line.startswith("sweep over:"))
    refit_over = next(i for i, line in enumerate(lines) if line.startswith("refit over:"))
    stage_lines = lines[search_over + 1 : refit_over + 1]
    for stage in ("confirmation", "refit"):
        (over,) = [line for line in stage_lines if line.startswith(f"{stage} over: ")]
        minutes, seconds = re.search(r"; took (\d+):(\d\d)$", over).groups()
        running = [line for line in stage_lines if line.startswith(f"{stage} running: ")]
        assert len(running) <= (60 * int(minutes) + int(seconds)) // 30, stage_lines
    assert len(stage_lines) == 2 + sum(" running: " in line for line in stage_lines), stage_lines
    assert not [line for line in lines if re.match(r"\s*(confirmed|refit) \d+/\d+", line)]


def _assert_runs_span_their_training(client, children, stage_runs, launched_ms: int, returned_ms: int) -> None:
    """A run's start and end are its training's, measured in the worker: within the launch (this
    test's clock), and at least as long as the training its pack timed (perf_counter, another
    clock), which the time of the driver's writes (milliseconds) was not.

    The two trained trials are one pack's members (one slot), trained at once from its first
    epoch, so they start together; a member's ``epoch_seconds`` is its share of the stack's epoch,
    which took that share times the members in it.
    """
    trained = [c for c in children if c.data.tags["dpsweep.outcome"] in ("completed", "pruned")]
    assert len(trained) == 2 and len({c.info.start_time for c in trained}) == 1, [c.info for c in trained]
    for run in [*trained, *stage_runs]:
        assert launched_ms <= run.info.start_time < run.info.end_time <= returned_ms, run.info
    shares = {
        c.info.run_id: {m.step: m.value for m in client.get_metric_history(c.info.run_id, "epoch_seconds")}
        for c in trained
    }
    for run in trained:
        own = shares[run.info.run_id]
        stack_ms = 1000 * sum(share * sum(step in other for other in shares.values()) for step, share in own.items())
        assert run.info.end_time - run.info.start_time >= stack_ms - len(own), (run.info, stack_ms)


def _assert_each_bound_has_its_model(tmp_path: Path, client: MlflowClient, best: list[dict], refits: list) -> None:
    """The registry holds one version per reported bound, ``dpsweep-<space>@eps-<bound>``, on the bound's
    first refit run, tagged with its ε, δ, accountant and test figures; loaded back, it scores on the
    test split exactly what that run reported, within two standard deviations of the refit's mean."""
    chosen = [b for b in best if b["test_accuracy_mean"] is not None]
    versions = client.search_model_versions("name = 'dpsweep-tiny'")
    assert len(versions) == len(chosen), [(v.version, v.aliases) for v in versions]
    refit_of = {r.info.run_name: r for r in refits}
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        for bound in chosen:
            alias = bound_alias(bound["epsilon_at_most"])
            version = client.get_model_version_by_alias("dpsweep-tiny", alias)
            run = refit_of[f"refit_{bound['trial']}_epoch{bound['epoch']}_eps{bound['epsilon_at_most']:g}_seed1"]
            assert version.run_id == run.info.run_id
            tags = version.tags
            assert float(tags["dpsweep.epsilon"]) == pytest.approx(bound["epsilon"], rel=1e-5)
            assert tags["dpsweep.delta"] == "1e-05" and tags["dpsweep.accountant"] == "rdp"
            assert tags["trained_on"] == "train+validation"
            assert float(tags["dpsweep.test_accuracy_mean"]) == pytest.approx(bound["test_accuracy_mean"], rel=1e-5)
            assert (
                "RDP accountant" in tags["dpsweep.privacy_statement"]
                and "naive composition" in tags["dpsweep.privacy_statement"]
            )
            model = mlflow.pytorch.load_model(f"models:/dpsweep-tiny@{alias}")
            images, labels = load_data(TrainConfig.from_dict(bound["train_config"]).data).test.tensors
            with torch.no_grad():
                accuracy = (model(images).argmax(dim=1) == labels).float().mean().item()
            assert accuracy == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)
            # 1e-6: the accuracy is a float32 mean, the reported one float64; both refit runs can
            # score alike (a tiny test split), and then the std is 0.
            assert abs(accuracy - bound["test_accuracy_mean"]) <= 2 * bound["test_accuracy_std"] + 1e-6
    finally:
        mlflow.set_tracking_uri(None)


def test_bad_space_stops_before_anything_runs(tmp_path: Path) -> None:
    space = tmp_path / "typo.yaml"
    space.write_text(TINY_SPACE.format(name="typo").replace("noise_multiplier:", "noise_multiplyer:"))
    done = _launch(tmp_path, "--space", str(space), timeout=120)
    assert done.returncode == 2
    assert "noise_multiplyer" in done.stderr and "noise_multiplier" in done.stderr and str(space) in done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()

    unknown = _launch(tmp_path, "--space", "no_such_space", timeout=120)
    assert unknown.returncode == 2 and "digits_quick" in unknown.stderr

    # A space file is checked before torch, Ray or MLflow load: a typo answers in about a second.
    imports = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sweeps.launch", "--space", str(space)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert imports.returncode == 2 and "noise_multiplyer" in imports.stderr
    loaded = {
        line.rsplit("|", 1)[-1].strip() for line in imports.stderr.splitlines() if line.startswith("import time:")
    }
    assert "sweeps.space" in loaded and not loaded & {"torch", "ray", "mlflow", "optuna"}


def test_num_cpus_is_for_local_ray_only(tmp_path: Path) -> None:
    space = tmp_path / "cluster.yaml"
    space.write_text(TINY_SPACE.format(name="cluster"))
    done = _launch(tmp_path, "--space", str(space), "--address", "127.0.0.1:1", timeout=120)
    assert done.returncode == 2 and "--num-cpus" in done.stderr and "--address" in done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()


def test_delta_not_below_one_over_n_stops_before_anything_runs(tmp_path: Path) -> None:
    space = tmp_path / "bigdelta.yaml"
    space.write_text(TINY_SPACE.format(name="bigdelta").replace("delta: 1.0e-5", "delta: 1.0e-3"))
    done = _launch(tmp_path, "--space", str(space), timeout=120)
    assert done.returncode == 2 and "1/N" in done.stderr and "delta" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_budget_below_every_trial_stops_before_anything_runs(tmp_path: Path) -> None:
    space = tmp_path / "tight.yaml"
    space.write_text(TINY_SPACE.format(name="tight").replace("epsilon_budget: 6.0", "epsilon_budget: 0.5"))
    done = _launch(tmp_path, "--space", str(space), timeout=120)
    assert done.returncode == 2 and "epsilon_budget" in done.stderr and "cheapest trial" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_list_shows_the_shipped_spaces(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.launch", "--list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0
    for name in ("digits_quick", "digits_grid", "mnist_grid", "cifar10_grid"):
        assert name in done.stdout


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(
    tmp_path: Path, ray_cluster: RayCluster, ray_holds: Path
) -> None:
    space = tmp_path / "resumable.yaml"
    # Lone trials (vectorize: off): the hold below is a lone trial's.
    space.write_text(
        TINY_SPACE.format(name="resumable")
        .replace("pruner: asha", "pruner: none\nvectorize: off")
        .replace("confirm: {top: 1, seeds: 2}", "confirm: off")
        .replace("epochs: 4", "epochs: 6")
    )
    # trial_0001 is held before it reports its second epoch (sweeps.workers.trial's test hook) until
    # the interruption: SIGINT comes once trial_0000 has finished and while trial_0001 trains, on
    # a machine however slow or loaded, with one slot or many. The trial workers are the session
    # cluster's: the hook's folder is the cluster's (ray_holds).
    hold = ray_holds / "trial_0001-epoch2"
    hold.with_name(hold.name + ".held").unlink(missing_ok=True)  # an earlier test's
    hold.touch()
    # --verbose: a line per trial, so that this test sees the first trial end.
    arguments = [
        "--space",
        str(space),
        "--verbose",
        "--address",
        ray_cluster.address,
        "--tracking-uri",
        empty_sqlite_store(tmp_path / "mlflow.db"),
        "--results-dir",
        str(tmp_path / "results"),
    ]

    def first_done_second_held() -> bool:
        if not hold.with_name(hold.name + ".held").exists():  # the store exists once a trial runs
            return False
        _, _, children = _runs(tmp_path)
        return any(
            c.info.run_name == "trial_0000" and c.data.tags.get("dpsweep.outcome") == "completed" for c in children
        )

    try:
        with launched(arguments, cwd=tmp_path, log=tmp_path / "launch.log") as launch:
            wait_for(
                lambda: not launch.running() or first_done_second_held(),
                timeout=300,
                interval=0.5,
                what="trial_0000 finished and trial_0001 held at its second epoch",
            )
            assert launch.running(), launch.output()[-6000:]
            launch.send(signal.SIGINT)  # like Ctrl-C
            code = launch.wait(timeout=180)
            log = launch.output()
    finally:
        hold.unlink(missing_ok=True)  # else it would hold the next sweep's trial_0001 on this cluster
    # The interrupted driver's trials end with it on a cluster it merely connected to.
    ray_cluster.wait_idle(timeout=60)
    assert code == 130 and "--resume" in log, log[-6000:]
    # [3/4]: the two grid points over the budget are counted first, as skipped.
    assert "[3/4]" in log, log
    _, _, children = _runs(tmp_path)
    finished_before = {c.info.run_name for c in children if c.data.tags["dpsweep.outcome"] == "completed"}
    assert finished_before == {"trial_0000"}, log

    resumed = _launch(tmp_path, "--space", str(space), "--resume", "--verbose", cluster=ray_cluster)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    client, parents, children = _runs(tmp_path)
    assert len(parents) == 1  # the same sweep, continued
    assert sorted(c.info.run_name for c in children) == [f"trial_000{i}" for i in range(4)]  # no duplicates
    trained = [c for c in children if c.data.tags["dpsweep.outcome"] != "skipped_over_budget"]
    assert {c.data.tags["dpsweep.outcome"] for c in trained} == {"completed"}
    for child in trained:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert steps == sorted(set(steps)) == list(range(1, 7)), (child.info.run_name, steps)
    progress = [line for line in resumed.stdout.splitlines() if line.startswith("[")]
    for name in finished_before:  # finished trials were not run again
        assert not any(name in line for line in progress), progress
    assert all(math.isfinite(c.data.metrics.get("epsilon", 0)) for c in trained)


OPTUNA_SPACE = """
name: tinyopt
description: tiny optuna sweep
fixed:
  dataset: digits
  model: mlp
  batch_size: 256
  epochs: 3
  delta: 1.0e-5
  accountant: rdp
axes:
  noise_multiplier: {{low: 0.3, high: 4.0, log: true}}
  lr: {{low: 0.5, high: 3.0, log: true}}
epsilon_budget: 4.0
search: optuna
trials: 4
objective: {objective}
pruner: none
resources: {{cpus: 1, gpus: 0}}
seed: 3
confirm: off  # the confirmation stage is tested in test_launch_e2e, test_confirm and the fault matrix
"""


@pytest.mark.parametrize("objective", ["single", "multi"])
def test_optuna_search_skips_over_budget_suggestions_and_tells_optuna(
    tmp_path: Path, objective: str, ray_cluster: RayCluster
) -> None:
    import optuna

    space = tmp_path / "tinyopt.yaml"
    space.write_text(OPTUNA_SPACE.format(objective=objective))
    done = _launch(tmp_path, "--space", str(space), cluster=ray_cluster)
    assert done.returncode == 0, done.stdout + done.stderr
    client, parents, children = _runs(tmp_path)
    outcomes = [c.data.tags["dpsweep.outcome"] for c in children]
    assert outcomes.count("completed") == 4  # `trials: 4` counts trained trials
    skipped = [c for c in children if c.data.tags["dpsweep.outcome"] == "skipped_over_budget"]
    assert skipped, "seed 3 suggests some σ whose planned ε is over the budget"
    for child in skipped:
        assert child.data.metrics["planned_epsilon"] > 4.0
        assert float(child.data.params["noise_multiplier"]) < 2.0
    for child in children:
        for m in client.get_metric_history(child.info.run_id, "epsilon"):
            assert m.value <= 4.0
    assert not any("seed" in c.data.params for c in children)  # no seed is logged, public or not
    # seed: 3 fixes every trial's noise: the launcher says what the ε then holds against.
    assert "reproducible research run" in done.stdout
    assert "holds only against someone who does not know that seed" in parents[0].data.tags["dpsweep.privacy_caveat"]
    # Optuna chose these trials from earlier results: their RDP sum is an odometer, said so.
    assert "odometer reading, not a bound" in done.stdout and "sweep_epsilon_budget" in done.stdout

    # The Optuna study saw every suggestion: trained ones complete, over-budget ones pruned.
    from sweeps.driver.search import journal_storage

    storage = journal_storage(next((tmp_path / "results").glob("*-optuna.journal")))
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4
    assert states.count(optuna.trial.TrialState.PRUNED) == len(skipped)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(len(t.values) == (2 if objective == "multi" else 1) for t in complete)
