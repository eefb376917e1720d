"""dp_core.federated: FedAvg of DP-SGD clients on digits — averaging, partition, per-client ε, CLI."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from dp_core import accounting
from dp_core.config import ConfigError
from dp_core.data import load_dataset
from dp_core.federated import (
    ClientSetup,
    FederatedConfig,
    InProcessExecutor,
    LocalClient,
    RoundReport,
    client_seed,
    fed_avg,
    partition,
    partition_data,
    plan_federated,
    split_flat,
    to_flat,
    train_federated,
)
from dp_core.train import StopTraining, TrainingDiverged

ROOT = Path(__file__).resolve().parents[2]
DIGITS = load_dataset("digits")
FAST = {"dataset": "digits", "model": "mlp", "batch_size": 32, "lr": 1.0, "max_grad_norm": 1.0}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- FedAvg ------------------------------------------------------------------------------------


def test_weighted_average_is_exact_on_hand_made_tensors() -> None:
    a = {"w": torch.tensor([1.0, 2.0, -3.0, 0.1]), "steps": torch.tensor(7)}
    b = {"w": torch.tensor([4.0, 0.5, 1.0, 0.7]), "steps": torch.tensor(7)}
    averaged = fed_avg([a, b], [1, 3])
    # The exact rational mean of the float32 inputs, rounded once to float32.
    exact = [float((Fraction(float(x)) * 1 + Fraction(float(y)) * 3) / 4) for x, y in zip(a["w"], b["w"], strict=True)]
    assert torch.equal(averaged["w"], torch.tensor(exact, dtype=torch.float32))
    assert averaged["w"][:3].tolist() == [3.25, 0.875, 0.0]
    assert averaged["w"].dtype == torch.float32 and torch.equal(averaged["steps"], torch.tensor(7))


def test_average_of_identical_models_is_that_model_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    state = {"a": torch.randn(64, 10, generator=generator), "b": torch.randn(10, generator=generator) * 1e-3}
    copies = [{k: v.clone() for k, v in state.items()} for _ in range(3)]
    assert _same_state(fed_avg(copies, [719, 718, 5]), state)


def test_fed_avg_refuses_bad_weights_and_disagreeing_counters() -> None:
    state = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match="weights"):
        fed_avg([state, state], [1.0, -1.0])
    with pytest.raises(ValueError, match="one weight per state"):
        fed_avg([state], [1, 2])
    with pytest.raises(ValueError, match="agree"):
        fed_avg([{"n": torch.tensor(1)}, {"n": torch.tensor(2)}], [1, 1])


def _setup(shard: torch.Tensor, *, index: int = 0, seed: int = 0, steps_per_round: int = 6) -> ClientSetup:
    config, _ = split_flat({**FAST, "noise_multiplier": 1.0, "clients": 1, "rounds": 2})
    images, labels = DIGITS.train.tensors
    return ClientSetup(
        index=index,
        seed=client_seed(seed, 0),
        config=config,
        images=images[shard],
        labels=labels[shard],
        input_shape=DIGITS.input_shape,
        num_classes=DIGITS.num_classes,
        private=True,
        noise_multiplier=1.0,
        sample_rate=32 / len(shard),
        steps_per_round=steps_per_round,
        total_steps=2 * steps_per_round,
    )


def test_fedavg_of_identical_clients_equals_one_clients_model() -> None:
    """Two clients with the same data and seed: the server's average is exactly one client's model."""
    shard = torch.arange(300)
    single = InProcessExecutor()
    single.start([_setup(shard)])
    twins = InProcessExecutor()
    twins.start([_setup(shard), _setup(shard, index=1)])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        state = {
            k: v.clone()
            for k, v in torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
            )
            .state_dict()
            .items()
        }
    alone, together = state, state
    for round_index in (1, 2):
        (one,) = single.train_round(alone, round_index=round_index)
        updates = twins.train_round(together, round_index=round_index)
        assert _same_state(updates[0].state, updates[1].state)
        alone = one.state
        together = fed_avg([u.state for u in updates], [u.num_examples for u in updates])
        assert _same_state(together, alone)
    assert not _same_state(alone, state)  # it did train


# ---- what a client releases --------------------------------------------------------------------


def test_a_client_sends_only_its_noised_parameters_and_its_shard_size() -> None:
    shard = torch.arange(300)
    setup = _setup(shard)
    global_state = {k: v.clone() for k, v in LocalClient(setup).module.state_dict().items()}
    client = LocalClient(setup)
    update = client.train_round(global_state, round_index=1)
    assert {field.name for field in dataclasses.fields(update)} == {"state", "num_examples"}
    assert update.num_examples == len(shard)
    # The state is the model's parameters and nothing else the client computed (no buffers).
    assert update.state.keys() == {name for name, _ in client.module.named_parameters()}
    # The same client without noise (same batches, same everything else) sends other parameters: they are noised.
    noiseless = LocalClient(dataclasses.replace(setup, noise_multiplier=0.0)).train_round(global_state, round_index=1)
    assert not _same_state(update.state, noiseless.state)


def test_rounds_report_no_training_loss_and_a_diverging_client_does_not_reveal_its_loss() -> None:
    assert "train_loss" not in {field.name for field in dataclasses.fields(RoundReport)}
    train, federated = split_flat({**FAST, "disable_dp": True, "lr": 1e30, "clients": 2, "rounds": 2})
    with pytest.raises(TrainingDiverged, match="lower the learning rate") as caught:
        train_federated(train, federated, data=DIGITS)
    assert "non-finite" in str(caught.value) and "nan" not in str(caught.value).lower()


# ---- partition ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_shards_are_disjoint_cover_the_data_and_follow_the_seed(scheme: str) -> None:
    labels = DIGITS.train.tensors[1]
    shards = partition(labels, clients=4, scheme=scheme, dirichlet_alpha=0.3, seed=5)
    joined = torch.cat(shards)
    assert len(joined) == len(labels) and torch.equal(joined.sort().values, torch.arange(len(labels)))
    again = partition(labels, clients=4, scheme=scheme, dirichlet_alpha=0.3, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(shards, again, strict=True))
    other = partition(labels, clients=4, scheme=scheme, dirichlet_alpha=0.3, seed=6)
    assert not all(torch.equal(x, y) for x, y in zip(shards, other, strict=True))
    sizes = [len(s) for s in shards]
    if scheme == "iid":
        assert max(sizes) - min(sizes) <= 1
    else:
        assert min(sizes) >= 10
        # Label skew: with α = 0.3 some client's commonest class is far above the uniform 10%.
        top_share = max(torch.bincount(labels[s], minlength=10).max().item() / len(s) for s in shards)
        assert top_share > 0.3


def test_dirichlet_alpha_too_small_for_many_clients_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="dirichlet_alpha"):
        partition(DIGITS.train.tensors[1], clients=120, scheme="dirichlet", dirichlet_alpha=0.001, seed=0)


# ---- configuration -----------------------------------------------------------------------------


def test_config_errors_name_key_value_and_rule() -> None:
    with pytest.raises(ConfigError, match=r"Expected clients to be an integer >= 1, but got clients=0\."):
        FederatedConfig(clients=0)
    with pytest.raises(ConfigError, match="partition to be one of dirichlet, iid"):
        FederatedConfig(partition="skewed")
    with pytest.raises(ConfigError, match="dirichlet_alpha"):
        FederatedConfig(dirichlet_alpha=0.0)
    with pytest.raises(ConfigError, match="Did you mean 'rounds'"):
        split_flat({**FAST, "noise_multiplier": 1.0, "round": 3})
    with pytest.raises(ConfigError, match=r"rounds × local_epochs = 3 × 2 = 6.*epochs=4"):
        split_flat({**FAST, "noise_multiplier": 1.0, "rounds": 3, "local_epochs": 2, "epochs": 4}, where="x.yaml")


def test_flat_form_round_trips() -> None:
    train, federated = split_flat(
        {
            **FAST,
            "target_epsilon": 2.0,
            "clients": 3,
            "rounds": 4,
            "local_epochs": 2,
            "partition": "dirichlet",
            "dirichlet_alpha": 0.5,
            "kind": "federated",
        }
    )
    flat = to_flat(train, federated)
    assert flat["kind"] == "federated" and flat["epochs"] == 8
    assert split_flat(flat) == (train, federated)


# ---- privacy -----------------------------------------------------------------------------------


def test_each_clients_epsilon_is_accounted_on_its_own_shard() -> None:
    """Client i's ε after round r is accounting.epsilon(σ, B/n_i, r·E·⌊n_i/B⌋ steps); the run's is the max."""
    train, federated = split_flat(
        {
            **FAST,
            "noise_multiplier": 1.2,
            "clients": 3,
            "rounds": 2,
            "local_epochs": 2,
            "partition": "dirichlet",
            "dirichlet_alpha": 1.0,
            "accountant": "prv",
        }
    )
    seen: list[RoundReport] = []
    result = train_federated(train, federated, on_round=seen.append, data=DIGITS)
    sizes = [len(shard) for shard in partition_data(DIGITS, train, federated)]
    assert len(set(sizes)) == 3  # unequal shards: the clients' ε differ
    assert [r.round for r in seen] == [1, 2] and result.reports == tuple(seen)
    # Each client's ε after every round, its own mechanism's per-round ε in one computation.
    by_round = [
        accounting.epsilons(
            noise_multiplier=1.2,
            sample_rate=32 / n,
            steps=[r * 2 * (n // 32) for r in (1, 2)],
            delta=1e-5,
            accountant="prv",
        )
        for n in sizes
    ]
    for report in seen:
        expected = [client[report.round - 1] for client in by_round]
        assert list(report.client_epsilons) == expected
        alone = [
            accounting.epsilon(
                noise_multiplier=1.2,
                sample_rate=32 / n,
                steps=report.round * 2 * (n // 32),
                delta=1e-5,
                accountant="prv",
            )
            for n in sizes
        ]
        assert expected == pytest.approx(alone, abs=0.02)  # each round on its own grid: within 2 × eps_error
        assert report.epsilon == max(expected)
        assert report.client_steps == tuple(report.round * 2 * (n // 32) for n in sizes)
        assert report.delta == 1e-5 and report.accountant == "prv"
    assert seen[0].epsilon < seen[1].epsilon
    assert result.final.test_accuracy > 0.5


def test_target_epsilon_calibrates_one_sigma_that_keeps_every_client_within_it() -> None:
    train, federated = split_flat(
        {
            **FAST,
            "target_epsilon": 2.0,
            "clients": 3,
            "rounds": 3,
            "partition": "dirichlet",
            "dirichlet_alpha": 1.0,
            "accountant": "rdp",
        }
    )
    sizes = [len(s) for s in partition_data(DIGITS, train, federated)]
    plan = plan_federated(train, federated, shard_sizes=sizes)
    assert plan.planned_epsilon <= 2.0
    assert plan.planned_epsilon > 1.9  # calibrated on the worst client, not wildly conservative
    smallest = min(range(3), key=lambda i: sizes[i])
    assert plan.clients[smallest].epsilon_by_round[-1] == plan.planned_epsilon  # smallest shard: largest q


def test_budget_stops_at_the_last_round_within_it() -> None:
    train, federated = split_flat(
        {**FAST, "noise_multiplier": 1.5, "clients": 2, "rounds": 6, "accountant": "rdp", "epsilon_budget": 1.5}
    )
    result = train_federated(train, federated, data=DIGITS)
    plan = result.plan
    assert plan.stops_early and result.stopped_early and result.final.stopped_by_budget
    assert len(result.reports) == plan.max_rounds < 6
    assert result.final.epsilon <= 1.5 < plan.epsilon_by_round[plan.max_rounds]


def test_shards_too_small_for_delta_or_batch_are_config_errors() -> None:
    train, federated = split_flat({**FAST, "noise_multiplier": 1.0, "clients": 2, "delta": 2e-3})
    with pytest.raises(ConfigError, match="client 0's shard of 719 examples"):
        plan_federated(train, federated, shard_sizes=[719, 718])
    train, federated = split_flat({**FAST, "noise_multiplier": 1.0, "clients": 2, "batch_size": 800})
    with pytest.raises(ConfigError, match="batch_size"):
        plan_federated(train, federated, shard_sizes=[719, 718])


def test_a_plan_for_another_configuration_is_refused() -> None:
    train, federated = split_flat({**FAST, "noise_multiplier": 1.0, "clients": 2, "rounds": 2, "accountant": "rdp"})
    sizes = [len(s) for s in partition_data(DIGITS, train, federated)]
    plan = plan_federated(train, federated, shard_sizes=sizes)
    wrong = dataclasses.replace(plan, noise_multiplier=2.0)
    with pytest.raises(ConfigError, match="match the configuration"):
        train_federated(train, federated, data=DIGITS, plan=wrong)
    assert train_federated(train, federated, data=DIGITS, plan=plan).plan == plan


def test_same_seed_same_model_and_stop_training_ends_after_the_round() -> None:
    train, federated = split_flat({**FAST, "noise_multiplier": 1.0, "clients": 2, "rounds": 3, "accountant": "rdp"})
    first = train_federated(train, federated, data=DIGITS)
    second = train_federated(train, federated, data=DIGITS)
    assert _same_state(first.model.state_dict(), second.model.state_dict())

    def stop_after_two(report: RoundReport) -> None:
        if report.round == 2:
            raise StopTraining

    stopped = train_federated(train, federated, data=DIGITS, on_round=stop_after_two)
    assert stopped.stopped_early and [r.round for r in stopped.reports] == [1, 2]


def test_non_private_run_reports_infinite_epsilon() -> None:
    train, federated = split_flat({**FAST, "disable_dp": True, "clients": 2, "rounds": 1})
    result = train_federated(train, federated, data=DIGITS)
    assert math.isinf(result.final.epsilon) and all(math.isinf(e) for e in result.final.client_epsilons)


# ---- command line ------------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess that imports torch and trains: seconds
def test_command_line_prints_accuracy_and_every_clients_epsilon_with_delta_and_accountant() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dp_core.federated",
            "--dataset",
            "digits",
            "--clients",
            "2",
            "--rounds",
            "2",
            "--batch-size",
            "64",
            "--sigma",
            "1.0",
            "--accountant",
            "rdp",
            "--lr",
            "1.0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("round")] == ["round 1/2", "round 2/2"]
    assert "global test accuracy" in lines[0]
    for client in (0, 1):
        assert (
            sum(
                line.strip().startswith(f"client {client}: ε = ") and "(δ = 1e-05, RDP accountant)" in line
                for line in lines
            )
            == 2
        )
    assert "max over clients" in done.stdout
    assert "train loss" not in done.stdout  # an un-noised statistic of the clients' data

    bad = subprocess.run(
        [sys.executable, "-m", "dp_core.federated", "--clients", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert bad.returncode == 2 and "clients=0" in bad.stderr
