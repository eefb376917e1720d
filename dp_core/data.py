"""Datasets by name, loaded whole into memory as normalised tensors.

Every dataset here is small enough to hold in memory, so each split is converted once, in a single vectorised
operation, into a ``TensorDataset`` of float32 images (N x C x H x W) and int64 labels. That keeps per-step cost at
indexing a tensor, which matters under DP-SGD where Poisson sampling draws a fresh batch of indices every step.
No augmentation is applied here. Augmentation multiplicity (``augmult``, off by default) draws random views of
each batch during training (``dp_core.augment``); it costs no ε: each example still adds one gradient, the mean
over its views, clipped to C, so the sensitivity and the accounting are those of training without it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dp_core.dataset_facts import DATASETS, DatasetFacts, Normalisation, canonical_train_size, validation_size
from dp_core.dataset_spec import DatasetSpec
from dp_core.errors import ConfigError
from dp_core.splits import DatasetSplits
from dp_core.synthetic import load_synthetic

if TYPE_CHECKING:
    from dp_core.config import DataConfig

__all__ = ["DATASETS", "DatasetSplits", "canonical_train_size", "load_data", "load_dataset", "validation_size"]


def load_data(config: DataConfig) -> DatasetSplits:
    """The splits a ``DataConfig`` names: its dataset, folder, download choice and validation share."""
    return load_dataset(
        config.dataset, root=config.data_root, download=config.download, validation_fraction=config.validation_fraction
    )


def load_dataset(
    name: str | DatasetSpec,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    validation_fraction: float = 0.0,
) -> DatasetSplits:
    """Load dataset ``name`` whole into memory, normalised.

    ``root`` is the folder holding torchvision's on-disk layout (default: ``$DPSWEEP_DATA`` if set, else
    ``~/.cache/dpsweep/data``); it is ignored for ``digits``, which ships with scikit-learn. With ``download=False``
    (the default, so that nothing reaches the network unasked) missing files raise :class:`ConfigError`.
    With ``validation_fraction`` > 0 that share of the training split becomes ``validation``: stratified by
    label, the same examples on every call and machine, and taken out of ``train``.

    ``name`` may also be an own dataset's :class:`~dp_core.dataset_spec.DatasetSpec`
    (:func:`dp_core.own_data.own_dataset`: the copy provided to this process, else read from its files);
    one with its own validation split (an npz's ``x_val``, ``y_val``) uses it for any ``validation_fraction`` > 0
    instead of holding one out, and none without.
    """
    if isinstance(name, DatasetSpec):
        return _own_splits(name, validation_fraction)
    facts = DATASETS.get(name)
    splits = (
        facts.load()
        if facts.source == "loader"
        else load_synthetic(name)
        if facts.source == "generated"
        else _load_digits()
        if name == "digits"
        else _load_torchvision(name, facts, _resolve_root(root), download)
    )
    return _hold_out_validation(splits, validation_fraction) if validation_fraction > 0 else splits


def _own_splits(spec: DatasetSpec, validation_fraction: float) -> DatasetSplits:
    from dp_core.own_data import own_dataset

    splits = own_dataset(spec).splits
    if splits.validation is not None:
        return splits if validation_fraction > 0 else dataclasses.replace(splits, validation=None)
    return _hold_out_validation(splits, validation_fraction) if validation_fraction > 0 else splits


def _hold_out_validation(splits: DatasetSplits, fraction: float) -> DatasetSplits:
    from sklearn.model_selection import train_test_split

    images, labels = splits.train.tensors
    # A fixed random_state: the split is part of the dataset's definition, not of a run's randomness
    # (it is no secret which examples were held out; they are never trained on).
    counts = torch.bincount(labels)
    train_index, val_index = train_test_split(
        np.arange(len(labels)),
        test_size=validation_size(len(labels), fraction),
        # Stratified unless a class has a single example (an own dataset may), which cannot be split.
        stratify=labels.numpy() if counts[counts > 0].min() >= 2 else None,
        random_state=0,
    )
    train_index, val_index = torch.from_numpy(np.sort(train_index)), torch.from_numpy(np.sort(val_index))
    return dataclasses.replace(
        splits,
        train=TensorDataset(images[train_index], labels[train_index]),
        validation=TensorDataset(images[val_index], labels[val_index]),
    )


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
    return _digits_splits(x_train, y_train, x_test, y_test, DATASETS.get("digits"))


def _digits_splits(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, facts: DatasetFacts
) -> DatasetSplits:
    """Digits splits from scikit-learn's N x 8 x 8 pixel counts, each image normalised on its own."""
    assert facts.normalisation is not None  # digits' facts fix its normalisation

    def to_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        counts = torch.from_numpy(x.astype(np.uint8)).unsqueeze(1)
        images = _normalise(counts, facts.normalisation, max_value=facts.max_value)
        return TensorDataset(images, torch.from_numpy(y.astype(np.int64)))

    return DatasetSplits(
        name="digits",
        train=to_dataset(x_train, y_train),
        test=to_dataset(x_test, y_test),
        num_classes=facts.num_classes,
        input_shape=facts.input_shape,
    )


def _normalise(images_nchw_uint8: torch.Tensor, stats: Normalisation, *, max_value: int = 255) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 ``(x/max_value - mean) / std`` per channel, for the whole split at once."""
    mean = torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1)
    return ((images_nchw_uint8.to(torch.float32) / max_value - mean) / std).contiguous()


def _load_torchvision(name: str, facts: DatasetFacts, root: Path, download: bool) -> DatasetSplits:
    from torchvision import datasets as tv_datasets  # here, not at import: a slow import most runs do not need

    loader, folder, stats = getattr(tv_datasets, str(facts.torchvision_class)), facts.folder, facts.normalisation
    assert stats is not None  # every file dataset's facts fix its normalisation
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
    return DatasetSplits(
        name=name, train=splits[0], test=splits[1], num_classes=facts.num_classes, input_shape=facts.input_shape
    )
