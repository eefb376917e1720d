"""Federated trials in a sweep: the space's `kind: federated`, planning, Ray client actors, end to end."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from dp_core.config import ConfigError
from dp_core.data import load_dataset
from dp_core.federated import InProcessExecutor, split_flat, train_federated
from sweeps.planning import EpsilonBudget, plan_trial
from sweeps.planning.federated import FederatedPlannedTrial
from sweeps.protocol import decode_unit, encode_unit
from sweeps.results.frontier import Point, pareto_front
from sweeps.space import Range, list_spaces, load_space
from sweeps.workers.federated_actors import RayClientExecutor, trial_resources
from tests._mlflow_store import empty_sqlite_store
from tests.sweeps._sweep_harness import ENV, RayCluster

ROOT = Path(__file__).resolve().parents[3]
DIGITS = load_dataset("digits")

SPACE = """
name: {name}
description: tiny federated sweep
kind: federated
fixed:
  dataset: digits
  model: mlp
  batch_size: 64
  delta: 1.0e-5
  accountant: rdp
  clients: 3
  rounds: 2
axes:
  noise_multiplier: [1.5, 0.3]
  lr: [1.0, 2.0]
epsilon_budget: 6.0
search: grid
pruner: none
resources: {{cpus: 2, gpus: 0}}
"""


def _write(tmp_path: Path, text: str, name: str = "fed") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.format(name=name))
    return path


# ---- the space -----------------------------------------------------------------------------------


def test_space_of_kind_federated_takes_the_federated_keys(tmp_path: Path) -> None:
    text = SPACE.replace("  lr: [1.0, 2.0]", "  lr: [1.0, 2.0]\n  rounds: {{low: 2, high: 6, num: 3}}").replace(
        "  rounds: 2\n", ""
    )
    space = load_space(_write(tmp_path, text))
    assert space.kind == "federated"
    assert space.axes["rounds"] == Range(low=2, high=6, num=3, integer=True)
    config = space.trial_config({"noise_multiplier": 1.5, "lr": 1.0, "rounds": 4})
    assert config["kind"] == "federated" and config["clients"] == 3 and config["epsilon_budget"] == 6.0
    train, federated = split_flat(config)
    assert (federated.clients, federated.rounds, train.epochs) == (3, 4, 4)
    assert load_space("digits_federated").kind == "federated" and load_space("digits_quick").kind == "train"


def test_shipped_federated_spaces_build_a_valid_federated_run_at_every_grid_point() -> None:
    spaces = [space for space in list_spaces() if space.kind == "federated"]
    assert "digits_federated" in {space.name for space in spaces}
    for space in spaces:
        assert space.search == "grid" and space.description
        for point in space.grid_points():
            train, federated = split_flat(point, where=str(space.source))
            assert point["kind"] == "federated" and train.privacy.epsilon_budget == space.epsilon_budget
            assert train.epochs == federated.rounds * federated.local_epochs
    digits = load_space("digits_federated")
    assert {"clients", "rounds", "local_epochs", "noise_multiplier", "max_grad_norm", "lr"} <= set(digits.axes)


def test_federated_keys_without_kind_federated_say_what_to_add(tmp_path: Path) -> None:
    path = _write(tmp_path, SPACE.replace("kind: federated\n", ""))
    with pytest.raises(ConfigError, match=r"Unknown key 'clients'.*add `kind: federated`") as error:
        load_space(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("kind: federated", "kind: swarm"), "kind to be one of federated, train"),
        (("  rounds: 2\n", "  rounds: 2\n  epochs: 5\n"), r"rounds × local_epochs = 2 × 1 = 2"),
        (("  clients: 3\n", "  clients: 0\n"), r"clients to be an integer >= 1, but got clients=0"),
        (("  lr: [1.0, 2.0]", "  lr: [1.0, 2.0]\n  partition: [iid, skewed]"), "partition to be one of dirichlet, iid"),
    ],
)
def test_bad_federated_spaces_fail_naming_the_file(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = _write(tmp_path, SPACE.replace(*change))
    with pytest.raises(ConfigError, match=message) as error:
        load_space(path)
    assert str(path) in str(error.value)


# ---- planning ------------------------------------------------------------------------------------


def test_a_federated_trial_plans_the_max_client_epsilon_and_is_skipped_over_budget(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, SPACE))
    budget = EpsilonBudget(space.epsilon_budget)
    planned = [
        plan_trial(space.trial_config(v), name=f"t{i}", axis_values=v) for i, v in enumerate(space.grid_axis_values())
    ]
    assert all(isinstance(t, FederatedPlannedTrial) for t in planned)
    for trial in planned:
        finals = [c.epsilon_by_round[-1] for c in trial.plan.clients]
        assert len(finals) == 3 and trial.planned_epsilon == max(finals)
        params = trial.params()
        assert params["kind"] == "federated" and params["planned_epsilon"] == max(finals)
        assert [params[f"client_{i}.planned_epsilon"] for i in range(3)] == finals
    assert [budget.rejects(t) is None for t in planned] == [True, True, False, False]  # σ = 0.3: over 6
    spec = decode_unit(encode_unit(planned[0].spec()))
    assert spec.kind == "federated" and spec.plan == planned[0].plan
    assert split_flat(spec.train)[1].clients == 3


def test_federated_trials_reserve_one_bundle_per_client(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, SPACE))
    resources = trial_resources(space)
    config = {
        "trial": encode_unit(
            plan_trial(space.trial_config({"noise_multiplier": 1.5, "lr": 1.0}), name="t", axis_values={}).spec()
        )
    }
    factory = resources(config)
    assert factory.head_bundle_is_empty  # the server takes nothing its clients could use
    assert factory.bundles == [{"CPU": 2 / 3}] * 3 and factory.strategy == "SPREAD"
    plain = dataclasses.replace(load_space("digits_quick"))
    assert trial_resources(plain) == {"cpu": plain.cpus_per_trial, "gpu": plain.gpus_per_trial}


# ---- Ray client actors (real local Ray) ------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def _run(executor, **overrides):
    train, federated = split_flat(
        {
            "dataset": "digits",
            "model": "mlp",
            "batch_size": 64,
            "lr": 1.0,
            "noise_multiplier": 1.0,
            "accountant": "rdp",
            "clients": 3,
            "rounds": 2,
            "partition": "dirichlet",
            "dirichlet_alpha": 1.0,
            **overrides,
        }
    )
    return train_federated(train, federated, executor=executor, data=DIGITS)


def _without_times(result) -> list[dict]:
    return [{k: v for k, v in r.to_dict().items() if not k.endswith("seconds")} for r in result.reports]


def test_actor_path_equals_in_process_path_bit_for_bit(local_ray) -> None:
    local = _run(InProcessExecutor())
    actors = _run(RayClientExecutor())
    kept = RayClientExecutor(keep_actors=True)
    warm_first, warm_again = _run(kept), _run(RayClientExecutor(keep_actors=True))  # the second reuses actors
    expected = local.model.state_dict()
    for result in (actors, warm_first, warm_again):
        state = result.model.state_dict()
        assert all(torch.equal(state[k], expected[k]) for k in expected)
        assert _without_times(result) == _without_times(local)


def test_inside_a_trial_placement_group_each_client_takes_its_bundle(local_ray) -> None:
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote(num_cpus=0)
    def where_clients_go(count: int) -> list[tuple[float, int | None]]:
        options = RayClientExecutor().actor_options(count)
        return [
            (o["num_cpus"], getattr(o.get("scheduling_strategy"), "placement_group_bundle_index", None))
            for _, o in options
        ]

    group = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="SPREAD")
    ray.get(group.ready())
    try:
        # Like a Tune trial with an empty head bundle: the server itself holds no CPU.
        in_group = where_clients_go.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
            )
        )
        assert ray.get(in_group.remote(2)) == [(0.5, 0), (0.5, 1)]
        # Bundles that do not match the clients: share, never wait for CPUs the caller holds.
        assert ray.get(in_group.remote(3)) == [(0, None)] * 3
    finally:
        remove_placement_group(group)
    assert RayClientExecutor().actor_options(2) == [
        ((None, 0), {"num_cpus": 0, "num_gpus": 0}),
        ((None, 1), {"num_cpus": 0, "num_gpus": 0}),
    ]


# ---- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_federated_sweep_logs_rounds_client_epsilons_and_the_frontier(
    tmp_path: Path, ray_cluster: RayCluster
) -> None:
    # Two clients: each client is an actor process importing torch, the bulk of a cold trial's start.
    space = _write(tmp_path, SPACE.replace("  clients: 3\n", "  clients: 2\n"), name="tinyfed")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.launch",
            "--space",
            str(space),
            "--tracking-uri",
            empty_sqlite_store(tmp_path / "mlflow.db"),
            "--results-dir",
            str(tmp_path / "results"),
            "--address",
            ray_cluster.address,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**ENV, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    grid_line = next(line for line in done.stdout.splitlines() if "grid points:" in line)
    assert "skipped over budget (trial_0002, trial_0003)" in grid_line, grid_line

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("dpsweep")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("dpsweep.role") == "sweep"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("dpsweep.role") == "trial"}
    assert parent.info.status == "FINISHED" and len(children) == 4
    outcomes = {name: run.data.tags["dpsweep.outcome"] for name, run in children.items()}
    assert "epsilon_client_2" not in children["trial_0000"].data.metrics
    assert outcomes == {
        "trial_0000": "completed",
        "trial_0001": "completed",
        "trial_0002": "skipped_over_budget",
        "trial_0003": "skipped_over_budget",
    }

    points = []
    for name in ("trial_0000", "trial_0001"):
        run = children[name]
        assert run.data.params["kind"] == "federated" and run.data.params["clients"] == "2"
        history = {
            key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for key in ("val_accuracy", "epsilon", "epsilon_client_0", "epsilon_client_1")
        }
        assert all(sorted(values) == [1, 2] for values in history.values())  # one step per round
        for step in (1, 2):
            clients = [history[f"epsilon_client_{i}"][step] for i in range(2)]
            assert history["epsilon"][step] == max(clients) <= 6.0
        assert history["epsilon"][2] == pytest.approx(float(run.data.params["planned_epsilon"]), rel=1e-12)
        points += [
            Point(epsilon=history["epsilon"][s], accuracy=a, run_id=run.info.run_id, trial=name, epoch=s)
            for s, a in history["val_accuracy"].items()
        ]

    folder = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "artifacts")))
    with open(folder / "frontier.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(points) == 4
    on_front = {(r["run_id"], int(r["epoch"])) for r in rows if r["on_frontier"] == "true"}
    assert on_front == {(p.run_id, p.epoch) for p in pareto_front(points)}
