"""sweeps.driver.resources: whether one trial fits a node, decided before any trial starts."""

from __future__ import annotations

import itertools
import os

import pytest

from dp_core.config import ConfigError
from sweeps.driver.resources import (
    NodeResources,
    TrialResources,
    parse_resources,
    require_fit,
    shortfall,
    this_machine,
    with_resources,
)
from sweeps.space import load_space

LAPTOP = [NodeResources(name="laptop", cpus=2, gpus=0)]
GPU_CLUSTER = [NodeResources(name="head", cpus=8, gpus=0), NodeResources(name="worker", cpus=16, gpus=1)]


# ---- parsing --------------------------------------------------------------------------------


def test_parse_resources_overrides_the_keys_given() -> None:
    default = TrialResources(cpus=4, gpus=0.5)
    assert parse_resources("cpus=2,gpus=0", default=default) == TrialResources(cpus=2, gpus=0)
    assert parse_resources("gpus=0.25", default=default) == TrialResources(cpus=4, gpus=0.25)
    assert parse_resources(" cpus = 1.5 ", default=default) == TrialResources(cpus=1.5, gpus=0.5)


@pytest.mark.parametrize("text", ["cpus=two", "cpu=2", "cpus=2;gpus=0", "cpus=2,cpus=3", "", "gpus=-1", "cpus=2,"])
def test_parse_resources_refuses_bad_syntax_with_the_expected_form(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--resources as cpus=N,gpus=M"):
        parse_resources(text, default=TrialResources(cpus=1, gpus=0))


@pytest.mark.parametrize(
    ("text", "rule"), [("cpus=0", "cpus to be a number > 0"), ("gpus=1.5", "gpus to be at most 1 or a whole number")]
)
def test_parse_resources_refuses_values_ray_cannot_reserve(text: str, rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        parse_resources(text, default=TrialResources(cpus=1, gpus=0))


def test_with_resources_replaces_the_spaces_per_trial_resources() -> None:
    space = load_space("cifar10_grid")
    assert (space.cpus_per_trial, space.gpus_per_trial) == (4, 0.5)
    smaller = with_resources(space, "cpus=2,gpus=0")
    assert (smaller.cpus_per_trial, smaller.gpus_per_trial) == (2, 0)
    assert smaller.axes == space.axes and smaller.fixed == space.fixed


def test_with_resources_refuses_more_than_one_gpu_per_trial_for_a_trial_on_one_device() -> None:
    space = load_space("cifar10_grid")
    with pytest.raises(ConfigError, match=r"at most 1 GPU per trial.*--resources cpus=4,gpus=2\..*gpus: 0.25"):
        with_resources(space, "cpus=4,gpus=2")
    assert with_resources(space, "gpus=1").gpus_per_trial == 1


# ---- the decision ---------------------------------------------------------------------------


def test_a_trial_must_fit_on_one_node() -> None:
    assert shortfall(TrialResources(cpus=2, gpus=0), LAPTOP) is None
    assert shortfall(TrialResources(cpus=4, gpus=0.5), GPU_CLUSTER) is None
    # 24 CPUs exist in all, but no node has 20.
    assert "no node has that much" in shortfall(TrialResources(cpus=20, gpus=0), GPU_CLUSTER)
    # The GPU node and the big-CPU node must be the same node.
    split = [NodeResources(name="cpu", cpus=16, gpus=0), NodeResources(name="gpu", cpus=1, gpus=1)]
    assert shortfall(TrialResources(cpus=4, gpus=0.5), split) is not None
    assert "no node is alive" in shortfall(TrialResources(cpus=1, gpus=0), [])


def test_spread_trials_need_the_cluster_totals_only() -> None:
    split = [NodeResources(name="a", cpus=2, gpus=0), NodeResources(name="b", cpus=2, gpus=0)]
    assert shortfall(TrialResources(cpus=4, gpus=0), split, spread=True) is None
    assert "4 CPUs and 0 GPUs in all" in shortfall(TrialResources(cpus=5, gpus=0), split, spread=True)


def test_the_message_names_what_was_asked_what_is_there_and_the_ways_out() -> None:
    with pytest.raises(ConfigError) as raised:
        require_fit(
            TrialResources(cpus=4, gpus=0.5),
            where="resources: in cifar10_grid.yaml",
            address=None,
            read_nodes=lambda: LAPTOP,
        )
    message = str(raised.value)
    assert "4 CPUs and 0.5 GPUs (resources: in cifar10_grid.yaml)" in message
    assert "local Ray cluster" in message and "laptop: 2 CPUs, 0 GPUs" in message
    assert "--resources cpus=2,gpus=0" in message and "--address" in message
    assert "--wait-for-resources" not in message  # waiting is for clusters that can grow


def test_a_fixed_cluster_is_told_about_waiting_and_a_fitting_one_passes() -> None:
    with pytest.raises(ConfigError, match="--wait-for-resources SECONDS"):
        require_fit(
            TrialResources(cpus=4, gpus=2),
            where="--resources cpus=4,gpus=2",
            address="head:6379",
            read_nodes=lambda: GPU_CLUSTER,
        )
    assert (
        require_fit(TrialResources(cpus=4, gpus=1), where="x", address="head:6379", read_nodes=lambda: GPU_CLUSTER)
        == GPU_CLUSTER
    )


# ---- the real cluster -----------------------------------------------------------------------


@pytest.mark.slow
def test_this_machine_is_its_cpus_or_those_asked_for_and_the_gpus_torch_sees() -> None:
    import torch

    (here,) = this_machine()
    assert (here.cpus, here.gpus) == (os.cpu_count(), torch.cuda.device_count())
    assert this_machine(3)[0].cpus == 3
    with pytest.raises(ConfigError, match=r"no trial could ever start"):
        require_fit(TrialResources(cpus=here.cpus + 1, gpus=0), where="x", address=None, read_nodes=this_machine)


def test_reads_the_real_cluster(local_ray) -> None:
    from sweeps.driver.resources import cluster_nodes

    nodes = cluster_nodes()
    assert len(nodes) == 1 and nodes[0].cpus == 1 and nodes[0].gpus == 0
    # What the launcher decides from before local Ray starts is what Ray then finds (1 CPU asked for here).
    (here,) = this_machine(1)
    assert (here.cpus, here.gpus) == (nodes[0].cpus, nodes[0].gpus)
    assert require_fit(TrialResources(cpus=1, gpus=0), where="x", address=None) == nodes
    with pytest.raises(ConfigError, match=r"--resources cpus=1,gpus=0"):
        require_fit(TrialResources(cpus=2, gpus=0.5), where="x", address=None)


@pytest.mark.slow
def test_waits_for_nodes_asks_the_autoscaler_and_then_gives_up_with_the_message(local_ray) -> None:
    from sweeps.driver.resources import cluster_nodes

    reads = itertools.count()

    def counted() -> list[NodeResources]:
        next(reads)
        return cluster_nodes()

    logged: list[str] = []
    with pytest.raises(ConfigError) as raised:
        require_fit(
            TrialResources(cpus=2, gpus=0),
            where="x",
            address="this-cluster",
            wait_seconds=0.5,
            read_nodes=counted,
            log=logged.append,
        )
    assert "after waiting 0.5 s for nodes to join" in str(raised.value)
    assert "--resources cpus=1,gpus=0" in str(raised.value)
    assert next(reads) >= 2  # read before waiting and again after
    assert "waiting up to 0.5 s" in logged[0]


def test_a_node_joining_while_waiting_ends_the_wait(local_ray) -> None:
    grown = iter([LAPTOP, LAPTOP + GPU_CLUSTER])
    nodes = require_fit(
        TrialResources(cpus=4, gpus=1),
        where="x",
        address="this-cluster",
        wait_seconds=30,
        read_nodes=lambda: next(grown),
        log=lambda _line: None,
    )
    assert nodes == LAPTOP + GPU_CLUSTER
