"""Datasets by name, loaded whole into memory as normalised tensors.

Every dataset here is small enough to hold in memory, so each split is converted once, in a single vectorised
operation, into a ``TensorDataset`` of float32 images (N x C x H x W) and int64 labels. That keeps per-step cost at
indexing a tensor, which matters under DP-SGD where Poisson sampling draws a fresh batch of indices every step.
No augmentation is applied: under DP it is off by default (it changes the per-example gradient the accountant sees).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dp_core.errors import ConfigError, require_choice
from dp_core.splits import DatasetSplits
from dp_core.synthetic import SYNTHETIC_DATASETS, load_synthetic

if TYPE_CHECKING:
    from dp_core.config import DataConfig

__all__ = ["DATASETS", "DatasetSplits", "canonical_train_size", "load_data", "load_dataset", "validation_size"]

# The synthetic_* stand-ins (dp_core.synthetic) are generated in memory: no files, root and download do not apply.
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "cifar10", *SYNTHETIC_DATASETS)

# Training-split sizes known without touching the disk: the privacy accountant needs the sampling rate
# (batch size / N) when a sweep is planned, long before any worker loads data. Read-only on purpose.
_TRAIN_SIZES = types.MappingProxyType({"digits": 1437, "mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000,
                                       **{name: spec.train_size for name, spec in SYNTHETIC_DATASETS.items()}})

# The usual published per-channel statistics of each training set; CIFAR-10's are those of the Opacus example,
# so accuracies stay comparable with it.
_MNIST_STATS = ((0.1307,), (0.3081,))
_FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
# Digits' pixels are counts 0..16, normalised as x/16 with these constants: never recomputed. Statistics computed
# on every load would make each example's input depend on every other training example, and would be an un-noised
# release of the training data outside the privacy accounting. They are the mean and std that were once computed
# from the fixed training split below, written here in full so that every digits input stays bit for bit as it was,
# and with it every earlier digits result.
_DIGITS_STATS = ((0.30538339422407795,), (0.3761191680900195,))
_DIGITS_MAX_COUNT = 16


def validation_size(train_size: int, fraction: float) -> int:
    """How many of ``train_size`` examples a validation split of ``fraction`` holds (scikit-learn's rounding)."""
    return math.ceil(fraction * train_size) if fraction > 0 else 0


def canonical_train_size(name: str, *, validation_fraction: float = 0.0) -> int:
    """Number of examples trained on for dataset ``name`` (its training split less validation), without loading it."""
    require_choice(name, key="dataset", choices=DATASETS)
    return _TRAIN_SIZES[name] - validation_size(_TRAIN_SIZES[name], validation_fraction)


def load_data(config: DataConfig) -> DatasetSplits:
    """The splits a ``DataConfig`` names: its dataset, folder, download choice and validation share."""
    return load_dataset(config.dataset, root=config.data_root, download=config.download,
                        validation_fraction=config.validation_fraction)


def load_dataset(
    name: str, *, root: str | os.PathLike[str] | None = None, download: bool = False, validation_fraction: float = 0.0
) -> DatasetSplits:
    """Load dataset ``name`` whole into memory, normalised.

    ``root`` is the folder holding torchvision's on-disk layout (default: ``$DPSWEEP_DATA`` if set, else
    ``~/.cache/dpsweep/data``); it is ignored for ``digits``, which ships with scikit-learn. With ``download=False``
    (the default, so that nothing reaches the network unasked) missing files raise :class:`ConfigError`.
    With ``validation_fraction`` > 0 that share of the training split becomes ``validation``: stratified by
    label, the same examples on every call and machine, and taken out of ``train``.
    """
    require_choice(name, key="dataset", choices=DATASETS)
    splits = (load_synthetic(name) if name in SYNTHETIC_DATASETS
              else _load_digits() if name == "digits" else _load_torchvision(name, _resolve_root(root), download))
    return _hold_out_validation(splits, validation_fraction) if validation_fraction > 0 else splits


def _hold_out_validation(splits: DatasetSplits, fraction: float) -> DatasetSplits:
    from sklearn.model_selection import train_test_split

    images, labels = splits.train.tensors
    # A fixed random_state: the split is part of the dataset's definition, not of a run's randomness
    # (it is no secret which examples were held out; they are never trained on).
    train_index, val_index = train_test_split(
        np.arange(len(labels)), test_size=validation_size(len(labels), fraction),
        stratify=labels.numpy(), random_state=0)
    train_index, val_index = torch.from_numpy(np.sort(train_index)), torch.from_numpy(np.sort(val_index))
    return dataclasses.replace(
        splits, train=TensorDataset(images[train_index], labels[train_index]),
        validation=TensorDataset(images[val_index], labels[val_index]))


def _resolve_root(root: str | os.PathLike[str] | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    # Read at call time rather than import time, so that setting DPSWEEP_DATA after import still takes effect.
    env = os.environ.get("DPSWEEP_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dpsweep" / "data"


def _load_digits() -> DatasetSplits:
    # Imported here: only this dataset needs scikit-learn, and its import is not free.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # A fixed, stratified split: the same 1437/360 examples on every call and every machine, so runs compare.
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.images, bunch.target, test_size=0.2, stratify=bunch.target, random_state=0
    )
    return _digits_splits(x_train, y_train, x_test, y_test)


def _digits_splits(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> DatasetSplits:
    """Digits splits from scikit-learn's N x 8 x 8 pixel counts, each image normalised on its own."""

    def to_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        counts = torch.from_numpy(x.astype(np.uint8)).unsqueeze(1)
        images = _normalise(counts, _DIGITS_STATS, max_value=_DIGITS_MAX_COUNT)
        return TensorDataset(images, torch.from_numpy(y.astype(np.int64)))

    return DatasetSplits(
        name="digits",
        train=to_dataset(x_train, y_train),
        test=to_dataset(x_test, y_test),
        num_classes=10,
        input_shape=(1, 8, 8),
    )


def _normalise(
    images_nchw_uint8: torch.Tensor, stats: tuple[tuple[float, ...], tuple[float, ...]], *, max_value: int = 255
) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 ``(x/max_value - mean) / std`` per channel, for the whole split at once."""
    mean = torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1)
    return ((images_nchw_uint8.to(torch.float32) / max_value - mean) / std).contiguous()


def _load_torchvision(name: str, root: Path, download: bool) -> DatasetSplits:
    from torchvision import datasets as tv_datasets  # here, not at import: it costs ~1.5 s per process

    loader, folder, stats, shape = {
        "mnist": (tv_datasets.MNIST, "MNIST/raw", _MNIST_STATS, (1, 28, 28)),
        "fashion_mnist": (tv_datasets.FashionMNIST, "FashionMNIST/raw", _FASHION_MNIST_STATS, (1, 28, 28)),
        "cifar10": (tv_datasets.CIFAR10, "cifar-10-batches-py", _CIFAR10_STATS, (3, 32, 32)),
    }[name]
    splits = []
    for train in (True, False):
        try:
            # torchvision's own loader reads the raw files; we only take its .data/.targets arrays and skip its
            # per-item PIL transforms, which would cost seconds per epoch.
            raw = loader(str(root), train=train, download=download)
        except RuntimeError as err:
            # torchvision signals missing or corrupted files with a bare RuntimeError ("Dataset not found ...");
            # anything else (e.g. a failed download) is not a configuration problem, so let it through.
            if "not found" not in str(err):
                raise
            raise ConfigError(
                f"Dataset {name!r} was not found under root={str(root)!r} (looked for {folder}/ there; "
                f"torchvision said: {err}). Pass download=True (--download on the command line) to fetch it, "
                f"or set DPSWEEP_DATA (or root) to a folder that holds torchvision's layout for {name}."
            ) from err
        if name == "cifar10":
            # CIFAR-10 arrives as a numpy uint8 array N x H x W x C; move channels first.
            images = torch.from_numpy(np.asarray(raw.data)).permute(0, 3, 1, 2)
        else:
            images = raw.data.unsqueeze(1)  # uint8 N x 28 x 28 -> N x 1 x 28 x 28
        labels = torch.as_tensor(raw.targets, dtype=torch.int64)
        splits.append(TensorDataset(_normalise(images, stats), labels))
    return DatasetSplits(name=name, train=splits[0], test=splits[1], num_classes=10, input_shape=shape)
