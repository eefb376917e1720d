"""Tests for dp_core.data: digits for real, MNIST/FashionMNIST/CIFAR-10 from tiny files in their on-disk formats."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets as tv_datasets

from dp_core import data as data_module
from dp_core.data import DATASETS, DatasetSplits, canonical_train_size, load_dataset
from dp_core.errors import ConfigError

# ---------------------------------------------------------------- writers of the real on-disk formats


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX as published by LeCun: big-endian magic (0x00 0x00, dtype 0x08 = uint8, ndim), big-endian dims, payload."""
    assert array.dtype == np.uint8
    magic = 0x0800 + array.ndim  # 2051 for 3-d images, 2049 for 1-d labels
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.tobytes())


def _write_mnist_like(root: Path, folder: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, size=20, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(8, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=8, dtype=np.uint8),
    }
    for filename, array in arrays.items():
        _write_idx(raw / filename, array)
    return arrays


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# Distinct constant per channel (R, G, B), so a channel mix-up in the HWC -> CHW conversion shows.
_CHANNEL_BYTES = (10, 128, 250)


def _write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Write cifar-10-batches-py/ with 2 images per train batch and 3 in the test batch; patch the md5 table.

    The real files are Python 2 pickles; loaded with encoding="latin1" (as torchvision does) their keys come back
    as str, so torchvision indexes entry["data"]. A Python 3 pickle must therefore use str keys too: with bytes keys
    (b"data", as the CIFAR web page shows for encoding="bytes") torchvision would fail with KeyError.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels: dict[str, list[int]] = {}
    sizes = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 3}
    for k, (filename, n) in enumerate(sizes.items()):
        # Rows are 3072 bytes: the 1024 red pixels (row-major), then green, then blue.
        image = np.concatenate([np.full(32 * 32, b, dtype=np.uint8) for b in _CHANNEL_BYTES])
        labels[filename] = [(k + j) % 10 for j in range(n)]
        entry = {"batch_label": filename, "labels": labels[filename], "data": np.tile(image, (n, 1))}
        (folder / filename).write_bytes(pickle.dumps(entry, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}, protocol=2))

    # torchvision verifies every file against md5s of the real CIFAR-10 held on the class: point them at ours.
    cls = tv_datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f, _md5(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, _md5(folder / f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / "batches.meta")})
    return labels


# ---------------------------------------------------------------- digits (real data, bundled with scikit-learn)


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits")


def test_digits_sizes_shapes_and_dtypes(digits: DatasetSplits) -> None:
    x_train, y_train = digits.train.tensors
    x_test, y_test = digits.test.tensors
    assert (len(digits.train), len(digits.test)) == (1437, 360)
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10 and digits.name == "digits"
    assert x_train.dtype == x_test.dtype == torch.float32
    assert y_train.dtype == y_test.dtype == torch.int64
    assert set(y_train.tolist()) == set(range(10))


def test_digits_split_is_stratified(digits: DatasetSplits) -> None:
    train_share = torch.bincount(digits.train.tensors[1], minlength=10) / len(digits.train)
    test_share = torch.bincount(digits.test.tensors[1], minlength=10) / len(digits.test)
    assert (train_share - test_share).abs().max() < 0.02


def test_digits_is_deterministic(digits: DatasetSplits) -> None:
    again = load_dataset("digits", root="/nonexistent/ignored")
    for a, b in zip(digits.train.tensors + digits.test.tensors, again.train.tensors + again.test.tensors):
        assert torch.equal(a, b)


def test_digits_normalised_with_fixed_constants(digits: DatasetSplits) -> None:
    """Every input is (count/16 - mean) / std with the module's constants: undoing it gives back the counts."""
    (mean,), (std,) = DATASETS.get("digits").normalisation
    for images in (digits.train.tensors[0], digits.test.tensors[0]):
        counts = (images.double() * std + mean) * DATASETS.get("digits").max_value
        torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-4)
        assert counts.round().min() >= 0 and counts.round().max() <= DATASETS.get("digits").max_value
    # The constants describe the training split: its inputs stay close to standardised.
    assert abs(digits.train.tensors[0].double().mean().item()) < 0.01
    assert abs(digits.train.tensors[0].double().std().item() - 1.0) < 0.01


def test_digits_inputs_do_not_change_when_one_training_example_is_removed() -> None:
    """No input depends on another example: statistics of the training split would make every one of them do so."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x_train, y_train = bunch.images[:1000], bunch.target[:1000]
    x_test, y_test = bunch.images[1000:], bunch.target[1000:]
    # Removing the brightest example moves any training-set mean or std the most.
    brightest = int(x_train.sum(axis=(1, 2)).argmax())
    kept = np.delete(np.arange(len(x_train)), brightest)
    full = data_module._digits_splits(x_train, y_train, x_test, y_test, DATASETS.get("digits"))
    without_one = data_module._digits_splits(x_train[kept], y_train[kept], x_test, y_test, DATASETS.get("digits"))
    assert torch.equal(full.train.tensors[0][kept], without_one.train.tensors[0])
    assert torch.equal(full.train.tensors[1][kept], without_one.train.tensors[1])
    assert torch.equal(full.test.tensors[0], without_one.test.tensors[0])


# ---------------------------------------------------------------- MNIST / FashionMNIST from IDX files


@pytest.mark.parametrize(
    ("name", "folder", "mean", "std"),
    [("mnist", "MNIST", 0.1307, 0.3081), ("fashion_mnist", "FashionMNIST", 0.2860, 0.3530)],
)
def test_mnist_like_from_idx_files(tmp_path: Path, name: str, folder: str, mean: float, std: float) -> None:
    written = _write_mnist_like(tmp_path, folder, np.random.default_rng(0))
    splits = load_dataset(name, root=tmp_path)
    x_train, y_train = splits.train.tensors
    x_test, y_test = splits.test.tensors
    assert x_train.shape == (20, 1, 28, 28) and x_test.shape == (8, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10 and splits.name == name
    assert y_train.tolist() == written["train-labels-idx1-ubyte"].tolist()
    assert y_test.tolist() == written["t10k-labels-idx1-ubyte"].tolist()
    pixels = [(x_train, "train-images-idx3-ubyte", (3, 5, 17)), (x_test, "t10k-images-idx3-ubyte", (7, 27, 0))]
    for x, key, (i, r, c) in pixels:
        byte = int(written[key][i, r, c])
        assert x[i, 0, r, c].item() == pytest.approx((byte / 255 - mean) / std, abs=1e-5)
    expected = (written["train-images-idx3-ubyte"] / 255 - mean) / std
    np.testing.assert_allclose(x_train[:, 0].numpy(), expected, atol=1e-5)


def test_default_root_comes_from_dpsweep_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_mnist_like(tmp_path, "MNIST", np.random.default_rng(1))
    monkeypatch.setenv("DPSWEEP_DATA", str(tmp_path))
    assert len(load_dataset("mnist").train) == 20


# ---------------------------------------------------------------- CIFAR-10 from pickled batches


def test_cifar10_from_pickled_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = _write_cifar10(tmp_path, monkeypatch)
    splits = load_dataset("cifar10", root=tmp_path)
    x_train, y_train = splits.train.tensors
    x_test, y_test = splits.test.tensors
    assert x_train.shape == (10, 3, 32, 32) and x_test.shape == (3, 3, 32, 32)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert x_train.is_contiguous()
    assert splits.input_shape == (3, 32, 32) and splits.num_classes == 10
    assert y_train.tolist() == sum((labels[f"data_batch_{i}"] for i in range(1, 6)), [])
    assert y_test.tolist() == labels["test_batch"]
    means, stds = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    for channel, (byte, mean, std) in enumerate(zip(_CHANNEL_BYTES, means, stds)):
        expected = (byte / 255 - mean) / std
        assert x_train[4, channel, 31, 2].item() == pytest.approx(expected, abs=1e-5)
        # Each channel is one constant over the whole image: nothing from another channel leaked in.
        assert torch.allclose(x_test[:, channel], torch.full_like(x_test[:, channel], expected), atol=1e-5)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["cifar10", "mnist", "fashion_mnist"])
def test_missing_files_raise_config_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset(name, root=tmp_path)
    message = str(info.value)
    assert name in message and str(tmp_path) in message
    assert "download=True" in message and "DPSWEEP_DATA" in message


def test_unknown_name_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="digits") as info:
        load_dataset("cifar100")
    assert "cifar100" in str(info.value)
    with pytest.raises(ConfigError, match="dataset"):
        canonical_train_size("cifar100")


# ---------------------------------------------------------------- sizes without loading


def test_canonical_train_size(digits: DatasetSplits) -> None:
    assert {name: canonical_train_size(name) for name in DATASETS} == {
        "digits": 1437,
        "mnist": 60_000,
        "fashion_mnist": 60_000,
        "cifar10": 50_000,
        # The generated stand-ins (dp_core.synthetic): small ones for tests, _full ones of the real sizes.
        "synthetic_cifar10": 1_000,
        "synthetic_mnist": 1_000,
        "synthetic_cifar10_full": 50_000,
        "synthetic_mnist_full": 60_000,
    }
    assert canonical_train_size("digits") == len(digits.train)
