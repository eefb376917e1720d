"""sweeps.driver.prepare_data: the data fetched and verified once by the launcher, never by the trials."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from dp_core.config import ConfigError, TrainConfig
from sweeps.driver.prepare_data import (
    check_digests,
    datasets_of,
    downloads_wanted,
    keep_digests,
    prepare_here,
    prepare_on_nodes,
    read_own,
    without_downloads,
)
from sweeps.space import load_space


def _write_mnist(root: Path) -> None:
    """Valid IDX files in torchvision's MNIST layout (20 train, 8 test images)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, shape in (
        ("train-images-idx3-ubyte", (20, 28, 28)),
        ("train-labels-idx1-ubyte", (20,)),
        ("t10k-images-idx3-ubyte", (8, 28, 28)),
        ("t10k-labels-idx1-ubyte", (8,)),
    ):
        array = rng.integers(0, 10 if len(shape) == 1 else 256, size=shape, dtype=np.uint8)
        header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
        (raw / name).write_bytes(header + array.tobytes())


def test_trials_get_a_space_that_never_downloads() -> None:
    space = load_space("cifar10_grid")
    assert downloads_wanted(space) and datasets_of(space) == ["cifar10"]
    for_trials = without_downloads(space)
    assert not downloads_wanted(for_trials)
    config = TrainConfig.from_dict(for_trials.trial_config(for_trials.grid_axis_values()[0]))
    assert config.data.download is False and config.data.dataset == "cifar10"
    assert without_downloads(load_space("digits_quick")) == load_space("digits_quick")  # nothing to change


def test_generated_datasets_have_nothing_to_prepare(tmp_path: Path) -> None:
    assert prepare_here(["digits", "synthetic_cifar10", "synthetic_mnist"], root=str(tmp_path), download=True) == []
    assert not any(tmp_path.iterdir())


def test_verifies_files_that_are_there(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    lines = prepare_here(["mnist"], root=str(tmp_path), download=False, log=lambda _line: None)
    assert len(lines) == 1 and "mnist ready" in lines[0] and "20 train, 8 test" in lines[0]


def test_missing_files_without_download_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found.*download: true under fixed"):
        prepare_here(["mnist"], root=str(tmp_path), download=False, log=lambda _line: None)


def test_a_download_that_cannot_reach_the_network_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    # No network: every HTTP(S) request goes to a proxy port where nothing listens (refused at once).
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(ConfigError, match=r"Could not fetch dataset 'mnist'.*Without network access"):
        prepare_here(["mnist"], root=str(tmp_path), download=True, log=lambda _line: None)


@pytest.mark.slow
def test_prepares_once_on_every_node_by_a_pinned_task(local_ray, tmp_path: Path) -> None:
    import ray

    _write_mnist(tmp_path)
    logged: list[str] = []
    lines = prepare_on_nodes(["mnist", "synthetic_mnist"], root=str(tmp_path), download=False, log=logged.append)
    alive = [node for node in ray.nodes() if node["Alive"]]
    assert len(lines) == len(alive) == 1 and "mnist ready" in lines[0]
    assert f"on each of {len(alive)} node(s)" in logged[0]
    # Generated datasets only: no task at all.
    assert prepare_on_nodes(["synthetic_mnist"], root=None, download=True) == []


@pytest.mark.slow
def test_a_node_without_the_data_names_itself(local_ray, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"On node .*not found"):
        prepare_on_nodes(["mnist"], root=str(tmp_path / "empty"), download=False, log=lambda _line: None)


def test_an_own_dataset_is_read_once_here_and_its_digest_guards_a_resume(tmp_path: Path) -> None:
    from dp_core.own_data import provided
    from tests._own_data import digits_arrays, write_npz

    arrays = digits_arrays()
    write_npz(tmp_path / "d.npz", **arrays)
    (tmp_path / "own.yaml").write_text(
        "fixed: {dataset: {format: npz, path: d.npz, classes: 10}, model: tabular_mlp, delta: 1.0e-3}\n"
        "axes: {lr: [1.0]}\nsearch: grid\n"
    )
    space = load_space(str(tmp_path / "own.yaml"))
    assert datasets_of(space) == []  # nothing to fetch: the own dataset is read, not prepared
    lines: list[str] = []
    (dataset,) = read_own(space, log=lines.append)
    assert dataset in provided() and "300 train, 100 test examples of shape (64,), 10 classes" in lines[0]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    keep_digests(sweep, [dataset])
    check_digests(sweep, [dataset])  # the same data: the resume goes on
    arrays["y_train"][0] = (arrays["y_train"][0] + 1) % 10
    write_npz(tmp_path / "d.npz", **arrays)
    (changed,) = read_own(space, log=lines.append)
    with pytest.raises(ConfigError, match=f"digest {dataset.digest}\\), but got digest {changed.digest}"):
        check_digests(sweep, [changed])
