"""What a sweep must look like once it has finished after a fault, read back from the real stores.

The fault matrix (test_fault_matrix.py) runs every kind of sweep into every fault; this module holds
the kinds' shape (:class:`Kind`), the state a fault is injected at (:func:`half_way`) and the checks
every cell ends with (:func:`check_sweep`): MLflow's runs, Optuna's journal, the frontier file and
the privacy ledger, each against the others and against dp_core.accounting as the ε oracle.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient

from dp_core import accounting

__all__ = ["Kind", "check_sweep", "half_way"]

_COMMON = """
fixed:
  dataset: digits
  model: mlp
  batch_size: {batch_size}
  epochs: {epochs}
  delta: 1.0e-5
  accountant: rdp
"""


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of sweep: its space, and when it is half-way (the state a fault is injected at)."""

    name: str
    space: str  # the YAML after `name:`, with the fixed block as {fixed}
    epochs: int
    # Packs: a pack is between its rounds while this many members (inclusive range) have completed.
    # None: lone trials, half-way once one has completed and another has logged an epoch.
    packed_completed: tuple[int, int] | None = None
    # Lone trials: the trial held before it reports its second epoch until the fault is injected
    # (sweeps.workers.trial's test hook), the last to start, so that half-way lasts until then.
    # "last": the last trial planned (a private selection's trial names are drawn).
    held: str | None = None
    # A held lone trial stays half-way however short its epochs: its kind takes batch 32 (45 steps an
    # epoch on digits), in its search and in the confirmation stage and refit. A pack is seen between
    # its rounds only while they last: packs take batch 16 (90 steps), federated rounds batch 8.
    batch_size: int = 8

    @property
    def optuna(self) -> bool:
        return "search: optuna" in self.space

    @property
    def federated(self) -> bool:
        return "kind: federated" in self.space

    def held_trial(self, space: Path) -> str | None:
        """The name of the trial held until the fault, for the space ``write`` wrote."""
        return _planned_grid(space)[-1].name if self.held == "last" else self.held

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.name}.yaml"
        fixed = _COMMON.format(epochs=self.epochs, batch_size=self.batch_size).strip()
        if self.federated:
            fixed = fixed.replace(f"  epochs: {self.epochs}", f"  clients: 2\n  rounds: {self.epochs}")
        for selection in _SELECTIONS if "{selection}" in self.space else [""]:
            path.write_text(
                f"name: {self.name}\ndescription: fault matrix\nseed: 0\n"
                + self.space.format(fixed=fixed, selection=selection)
            )
            if not selection or 3 <= len(_planned_grid(path)) <= 5:
                return path
        raise AssertionError(f"no private_selection of {_SELECTIONS} draws 3-5 trials with seed 0")


# Distributions of K to try, in order, until the seeded draw gives a few trials (3-5): enough for
# one to finish while another trains, whatever stream the launcher draws K from.
_SELECTIONS = [
    f"{{distribution: truncated_negative_binomial, mean: {mean}, eta: {eta}}}" for mean in (2, 3, 4) for eta in (2, 3)
] + [f"{{distribution: poisson, mean: {mean}}}" for mean in (3, 4, 5)]

# ---- reading a sweep back -----------------------------------------------------------------------


def _sweep_dir(results: Path) -> Path | None:
    folders = [p for p in results.iterdir() if p.is_dir()] if results.is_dir() else []
    assert len(folders) <= 1, folders
    return folders[0] if folders else None


def _runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000) if found else []
    return (
        [r for r in runs if r.data.tags.get("dpsweep.role") == "sweep"],
        [r for r in runs if r.data.tags.get("dpsweep.role") == "trial"],
    )


def _study(results: Path) -> optuna.Study:
    from sweeps.driver.search import journal_storage

    sweep = _sweep_dir(results)
    assert sweep is not None
    storage = journal_storage(results / f"{sweep.name}-optuna.journal")
    return optuna.load_study(study_name=sweep.name, storage=storage)


def half_way(kind: Kind, client: MlflowClient, experiment: str, results: Path) -> bool:
    """Some trial has finished and another is training, and Tune has saved state to resume from."""
    sweep = _sweep_dir(results)
    if sweep is None or not any(sweep.glob("experiment_state*.json")):
        return False
    _, children = _runs(client, experiment)
    completed = sum(c.data.tags.get("dpsweep.outcome") == "completed" for c in children)
    # Packs show their members in MLflow as they end; a lone trial shows with its first epoch.
    low, high = kind.packed_completed or (1, len(children) - 1)
    if not low <= completed <= high:
        return False
    if kind.packed_completed is None and not any(
        c.info.status == "RUNNING" and client.get_metric_history(c.info.run_id, "val_accuracy") for c in children
    ):
        return False
    if kind.optuna:  # the finished trials were told to Optuna too
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in _study(results).trials) >= low
    return True


# ---- the checks ---------------------------------------------------------------------------------


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    history = client.get_metric_history(run_id, key)
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)), f"{key} logged twice for one step in run {run_id}: {sorted(steps)}"
    return {m.step: m.value for m in history}


def _planned_grid(space: Path) -> list[Any]:
    from sweeps.planning import plan_grid
    from sweeps.privacy.selection import select_trials
    from sweeps.space import load_space

    loaded = load_space(str(space))
    grid = plan_grid(loaded, workers=1)
    return select_trials(loaded, grid) if loaded.private_selection is not None else grid


def _check_epsilon(kind: Kind, client: MlflowClient, child: Any) -> None:
    """ε at every logged epoch equals dp_core.accounting's for the trial's (σ, q, steps): its plan."""
    params = child.data.params
    run_id, name = child.info.run_id, child.info.run_name
    accuracy = _history(client, run_id, "val_accuracy")
    epsilon = _history(client, run_id, "epsilon")
    assert sorted(accuracy) == list(range(1, len(accuracy) + 1)), (name, sorted(accuracy))  # each epoch once
    assert sorted(epsilon) == sorted(accuracy), name
    if not accuracy:  # handed to a worker that died before its first epoch: nothing was reported
        assert child.data.tags["dpsweep.outcome"] not in ("completed", "stopped_by_budget"), name
        return
    sigma, delta, accountant = float(params["noise_multiplier"]), float(params["delta"]), params["accountant"]

    def oracle(sample_rate: float, steps: int) -> float:
        return accounting.epsilon(
            noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant
        )

    if kind.federated:
        # ε of a round is the largest of the clients', each accounted on its own shard.
        per_client = []
        for i in range(int(params["clients"])):
            sample_rate = float(params[f"client_{i}.sample_rate"])
            steps_per_round = max(1, int(1 / sample_rate)) * int(params["local_epochs"])
            client_epsilon = _history(client, run_id, f"epsilon_client_{i}")
            for step, value in client_epsilon.items():
                assert value == pytest.approx(oracle(sample_rate, step * steps_per_round), rel=1e-9), (name, i, step)
            per_client.append(client_epsilon)
        for step, value in epsilon.items():
            assert value == max(c[step] for c in per_client), (name, step)
        planned_epochs = int(params["rounds"])
    else:
        planned_epochs = int(params["epochs"])
        steps_per_epoch = int(params["steps_planned"]) // planned_epochs
        for step, value in epsilon.items():
            assert value == pytest.approx(
                oracle(float(params["sample_rate_resolved"]), step * steps_per_epoch), rel=1e-9
            ), (name, step)
    if child.data.tags["dpsweep.outcome"] == "completed":
        assert max(epsilon) == planned_epochs, name
        assert epsilon[planned_epochs] == pytest.approx(float(params["planned_epsilon"]), rel=1e-9), name


def _has_reason(child: Any, trial: optuna.trial.FrozenTrial) -> bool:
    tags = child.data.tags if child is not None else {}
    attrs = {**trial.user_attrs, **trial.system_attrs}
    attrs.pop("planned_epsilon", None)
    return bool(tags.get("dpsweep.failure") or tags.get("dpsweep.skip_reason") or attrs)


def _check_study(kind: Kind, space: Path, client: MlflowClient, results: Path, children: list) -> None:
    """One finished state per trial, and the study agrees with the child runs."""
    from sweeps.space import load_space

    trials = _study(results).trials
    states = optuna.trial.TrialState
    assert [t.number for t in trials if not t.state.is_finished()] == [], [(t.number, t.state) for t in trials]
    by_name = {c.info.run_name: c for c in children}
    numbers = {f"trial_{t.number:04d}": t for t in trials}
    assert set(by_name) <= set(numbers), "a child run that is no trial of the study"
    trained = [c for c in children if c.data.tags["dpsweep.outcome"] != "skipped_over_budget"]
    assert len(trained) >= load_space(str(space)).trials  # every trial asked for was handed out
    for name, trial in numbers.items():
        child = by_name.get(name)
        outcome = child.data.tags["dpsweep.outcome"] if child is not None else None
        if trial.state == states.COMPLETE:
            assert outcome in ("completed", "stopped_by_budget"), (name, outcome)
            accuracy = _history(client, child.info.run_id, "val_accuracy")
            epsilon = _history(client, child.info.run_id, "epsilon")
            last = max(accuracy)
            told = [accuracy[last], epsilon[last]] if "objective: multi" in kind.space else [accuracy[last]]
            assert trial.values == pytest.approx(told, rel=1e-12), name
        else:
            assert outcome not in ("completed", "stopped_by_budget"), (name, trial.state, outcome)
            assert _has_reason(child, trial), f"{name} is {trial.state.name} in the study with no reason given"


def _check_frontier(
    kind: Kind, client: MlflowClient, sweep: Path, parent: Any, trained: list, frontiers: dict[str, dict]
) -> None:
    """The frontier file holds every point of every trial that trained, as MLflow has them; for a
    grid, the points every other fault on this kind reached too (each trial's own seed, so the same
    results however often it was interrupted, retried or resumed)."""
    with open(sweep / "frontier" / "frontier.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["kind"] == "search"]
    points = {(r["trial"], int(r["epoch"])): (float(r["epsilon"]), float(r["val_accuracy"])) for r in rows}
    assert len(points) == len(rows), "a point twice in the frontier"
    logged = {}
    for child in trained:
        epsilon = _history(client, child.info.run_id, "epsilon")
        for step, accuracy in _history(client, child.info.run_id, "val_accuracy").items():
            logged[(child.info.run_name, step)] = (epsilon[step], accuracy)
    assert set(points) == set(logged)
    for key, (epsilon, accuracy) in logged.items():
        assert points[key] == pytest.approx((epsilon, accuracy), rel=1e-9), key
    assert "frontier.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    if not kind.optuna:  # an Optuna sweep's later suggestions depend on when it was interrupted
        reached = frontiers.setdefault(kind.name, logged)
        assert set(logged) == set(reached)
        for key, (epsilon, accuracy) in logged.items():
            assert (epsilon, accuracy) == pytest.approx(reached[key], rel=1e-9), key


def _check_privacy(kind: Kind, sweep: Path, trained: list, output: str, *, delta: float) -> None:
    """Every trial that trained is in the privacy ledger, and the launcher's composition of the sweep
    counts each of them once: its count (where shown) and its ε are those of exactly these trials."""
    from sweeps.privacy.mechanism import TrialMechanism, naive_composition_epsilon

    if kind.federated:
        # No composition for federated sweeps: sweeps.launch reports the selection's privacy for
        # kind: train only, and a federated trial is no single DP-SGD mechanism (ε per client shard).
        assert "naive composition" not in output
        return
    ledger = sweep / "privacy-ledger.jsonl"
    assert ledger.exists(), f"no privacy ledger at {ledger}"
    entries = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    for entry in entries:
        assert {"key", "name", "noise_multiplier", "sample_rate", "steps"} <= set(entry), entry
    ledgered = {
        entry["key"]: TrialMechanism(
            noise_multiplier=float(entry["noise_multiplier"]),
            sample_rate=float(entry["sample_rate"]),
            steps=int(entry["steps"]),
        )
        for entry in entries
    }
    for child in trained:  # in the ledger, as the mechanism it ran
        assert ledgered.get(child.data.tags["dpsweep.trial_key"]) == TrialMechanism.from_params(child.data.params), (
            f"{child.info.run_name} trained but its ledger entry is missing or another mechanism"
        )
    # "naive composition over the 4 trials run: ε = 1.540 (...)"; Optuna sweeps call it an RDP sum;
    # with private selection the count is not shown (it would give K away).
    found = re.findall(
        r"(?:naive composition|RDP sum) over the (\d+ trials? run|trials run \([^)]*\))"
        r"(?: \([^)]*\))?: ε = ([\d.]+)",
        output,
    )
    assert found, f"no composition of the sweep's trials in the final output:\n{output[-3000:]}"
    counted, epsilon = found[-1]
    if counted[0].isdigit():
        assert int(counted.split()[0]) == len(ledgered)
    expected = naive_composition_epsilon(list(ledgered.values()), delta=delta)
    assert float(epsilon) == pytest.approx(expected, abs=5e-4)  # printed to 3 decimals


def _check_span(client: MlflowClient, child: Any, parent: Any) -> None:
    """However the sweep was broken and resumed, a trial's run spans at least the epochs its
    trainer timed (each logged once), within its sweep's run: its times are its worker's, kept."""
    info = child.info
    assert parent.info.start_time <= info.start_time < info.end_time <= parent.info.end_time, (info, parent.info)
    timed_ms = 1000 * sum(m.value for m in client.get_metric_history(info.run_id, "epoch_seconds"))
    assert info.end_time - info.start_time >= timed_ms - 5, (info, timed_ms)


def check_sweep(
    kind: Kind,
    *,
    space: Path,
    client: MlflowClient,
    experiment: str,
    results: Path,
    output: str,
    frontiers: dict[str, dict],
) -> None:
    sweep = _sweep_dir(results)
    assert sweep is not None
    parents, children = _runs(client, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [p.info.status for p in parents]
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    keys = [c.data.tags["dpsweep.trial_key"] for c in children]
    assert len(keys) == len(set(keys)), f"two child runs for one trial: {sorted(c.info.run_name for c in children)}"
    left = [
        (c.info.run_name, c.info.status, c.data.tags["dpsweep.outcome"])
        for c in children
        if c.info.status == "RUNNING" or c.data.tags["dpsweep.outcome"] in ("running", "interrupted")
    ]
    assert left == [], "child runs left running or interrupted"
    if not kind.optuna:
        planned = _planned_grid(space)
        assert sorted((c.info.run_name, c.data.tags["dpsweep.trial_key"]) for c in children) == sorted(
            (t.name, t.key) for t in planned
        )  # exactly the planned trials, each once
        assert {c.data.tags["dpsweep.outcome"] for c in children} == {"completed"}
    trained = [c for c in children if c.data.tags["dpsweep.outcome"] != "skipped_over_budget"]
    for child in trained:
        _check_epsilon(kind, client, child)
        _check_span(client, child, parent)
    if kind.optuna:
        _check_study(kind, space, client, results, children)
    _check_frontier(kind, client, sweep, parent, trained, frontiers)
    _check_confirmation(space, client, experiment, sweep, frontiers, kind)
    _check_privacy(kind, sweep, trained, output, delta=float(parent.data.params["delta"]))


def _check_confirmation(
    space: Path, client: MlflowClient, experiment: str, sweep: Path, frontiers: dict[str, dict], kind: Kind
) -> None:
    """A space with confirm: each confirmation run once, finished, in the ledger, and in frontier.csv
    and best_per_epsilon.json; for a grid, the same confirmed results however the sweep was broken."""
    if "confirm: {" not in space.read_text():
        ran = {r.info.run_id for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])}
        registered = [v for v in client.search_model_versions() if v.run_id in ran]
        if "private_selection:" in space.read_text():
            _check_selected_model(space, client, kind, sweep, registered)
        else:  # no refit: nothing to register
            assert registered == [], [(v.name, v.version) for v in registered]
        return
    runs = [
        r
        for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=10_000)
        if r.data.tags.get("dpsweep.role") in ("confirmation", "refit")
    ]
    assert runs, "no confirmation runs"
    names = [r.info.run_name for r in runs]
    assert len(names) == len(set(names)), "a confirmation run twice"
    assert {(r.info.status, r.data.tags["dpsweep.outcome"]) for r in runs} == {("FINISHED", "completed")}
    entries = [json.loads(line) for line in (sweep / "privacy-ledger.jsonl").read_text().splitlines() if line.strip()]
    assert sorted(e["name"] for e in entries if e["role"] in ("confirmation", "refit")) == sorted(names)
    with open(sweep / "frontier" / "frontier.csv") as handle:
        confirmed = [r for r in csv.DictReader(handle) if r["kind"] == "confirmed"]
    # Every run is counted in its configuration's row (its run id is known there unless MLflow was
    # away when it was logged: then the journal created it later): a chosen configuration's seeds
    # are its refit runs, the others' their confirmation runs.
    refit_runs = sum(r.data.tags["dpsweep.role"] == "refit" for r in runs)
    assert refit_runs and all(r["trained_on"] == "train+validation" for r in confirmed if r["best_for_epsilon"])
    (seeds,) = {int(r["seeds"]) for r in confirmed}  # the space's, for both stages
    assert len(runs) == seeds * (len(confirmed) + sum(bool(r["best_for_epsilon"]) for r in confirmed))
    assert {i for r in confirmed for i in r["run_id"].split()} <= {r.info.run_id for r in runs}
    best = json.loads((sweep / "frontier" / "best_per_epsilon.json").read_text())
    assert any(b["confirmed"] and b["test_accuracy_mean"] is not None for b in best)
    if not kind.optuna:
        figures = sorted((r["trial"], r["epoch"], r["val_accuracy"], r["test_accuracy_mean"]) for r in confirmed)
        assert figures == frontiers.setdefault(f"{kind.name}:confirmed", figures)
    _check_models(client, kind, best, runs)


def _check_models(client: MlflowClient, kind: Kind, best: list[dict], runs: list) -> None:
    """One registered version per reported bound (however often registration was cut off and resumed),
    on that bound's first refit run, under the bound's alias."""
    name = f"dpsweep-{kind.name}"
    refits = {r.info.run_name: r.info.run_id for r in runs if r.data.tags["dpsweep.role"] == "refit"}
    versions = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id in refits.values()]
    chosen = [b for b in best if b["test_accuracy_mean"] is not None]
    assert len(versions) == len(chosen), sorted((v.version, v.run_id) for v in versions)
    for bound in chosen:
        alias = "eps-" + f"{bound['epsilon_at_most']:g}".replace(".", "_")
        run = f"refit_{bound['trial']}_epoch{bound['epoch']}_eps{bound['epsilon_at_most']:g}_seed1"
        assert client.get_model_version_by_alias(name, alias).run_id == refits[run]


def _check_selected_model(space: Path, client: MlflowClient, kind: Kind, sweep: Path, registered: list) -> None:
    """A private selection registers exactly what it releases (release/selected_model.json): one version
    (however the sweep was broken and resumed), under @selected, on the child run of the search point
    of highest validation accuracy (the earliest of equals), tagged with the release's fields and
    nothing else, whose model scores the released validation accuracy on the validation split."""
    import mlflow
    import mlflow.pytorch

    from dp_core.config import TrainConfig
    from dp_core.data import load_data
    from dp_core.train import evaluate

    release = json.loads((sweep / "release" / "selected_model.json").read_text())
    name = f"dpsweep-{kind.name}"
    assert [v.name for v in registered] == [name], [(v.name, v.version) for v in registered]  # no other trial's
    (version,) = registered
    assert client.get_model_version_by_alias(name, "selected").version == version.version
    run = client.get_run(version.run_id)
    accuracy = _history(client, run.info.run_id, "val_accuracy")
    assert accuracy[release["epoch"]] == release["val_accuracy"]
    assert min(e for e, a in accuracy.items() if a == release["val_accuracy"]) == release["epoch"]
    trials = [r for r in client.search_runs([run.info.experiment_id]) if r.data.tags.get("dpsweep.role") == "trial"]
    assert max(max(_history(client, r.info.run_id, "val_accuracy").values()) for r in trials) == release["val_accuracy"]

    tags = version.tags
    assert set(tags) == {
        "dpsweep.sweep_epsilon", "dpsweep.delta", "dpsweep.accountant", "dpsweep.guarantee", "dpsweep.val_accuracy",
        "dpsweep.epoch", "dpsweep.hyperparameters", "trained_on", "dpsweep.privacy_statement", "dpsweep.trial_run_id",
    }  # fmt: skip
    assert float(tags["dpsweep.sweep_epsilon"]) == pytest.approx(release["sweep_epsilon"], rel=1e-5)
    assert float(tags["dpsweep.delta"]) == release["delta"] and tags["dpsweep.accountant"] == release["accountant"]
    assert tags["dpsweep.guarantee"] == release["guarantee"] and tags["trained_on"] == release["trained_on"] == "train"
    assert float(tags["dpsweep.val_accuracy"]) == pytest.approx(release["val_accuracy"], rel=1e-5)
    assert int(tags["dpsweep.epoch"]) == release["epoch"]
    assert json.loads(tags["dpsweep.hyperparameters"]) == release["hyperparameters"]
    assert tags["dpsweep.trial_run_id"] == run.info.run_id
    # No secret: not K, the seeds, the trials' names, the naive composition (it grows with K).
    planned = _planned_grid(space)
    told = " ".join(v for k, v in tags.items() if k != "dpsweep.trial_run_id")
    for trial in planned:
        assert trial.name not in told and str(trial.train_config["seed"]) not in told
    assert "naive" not in told and "composition" not in told and "trials run" not in told

    config = TrainConfig.from_dict(next(t.train_config for t in planned if t.name == run.info.run_name))
    previous, environment = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        model = mlflow.pytorch.load_model(f"models:/{name}@selected")
    finally:  # set_tracking_uri sets the variable too, which the next cell's launcher would inherit
        mlflow.set_tracking_uri(previous)
        if environment is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = environment
    _, val_accuracy = evaluate(model, *load_data(config.data).validation.tensors, batch_size=config.test_batch_size)
    assert val_accuracy == pytest.approx(release["val_accuracy"], abs=1e-12)
