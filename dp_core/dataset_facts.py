"""What is known of each dataset without loading it: input shape, classes, split sizes, source.

A leaf module (no torch, no numpy), so that whoever needs a fact before any data is loaded reads
it here: config validation (is the name known), the privacy plan (the training-set size N, for
the sampling rate B/N), ``dp_core.vectorized`` (the model's input shape while a sweep groups its
trials), ``python -m dp_core.bench`` and a sweep's data preparation (which datasets are files to
fetch). ``dp_core.data`` loads a dataset by these facts.

``DATASETS`` is a :class:`~dp_core.registry.Registry`: a dataset registered at run time, with a
``load`` function that returns its ``DatasetSplits``, is selectable as ``dataset`` like a built-in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from dp_core.dataset_spec import DatasetSpec
from dp_core.errors import ConfigError, require_in_range
from dp_core.registry import Registry

__all__ = [
    "DATASETS",
    "FILE_DATASETS",
    "SOURCES",
    "DatasetFacts",
    "canonical_train_size",
    "validation_size",
]

#: Where a dataset comes from: torchvision's files under a data folder; bundled with scikit-learn;
#: generated in memory (``dp_core.synthetic``); or the ``load`` function of one registered at run time.
SOURCES = ("files", "bundled", "generated", "loader")

Normalisation = tuple[tuple[float, ...], tuple[float, ...]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetFacts:
    """One dataset's facts; ``normalisation`` is the fixed per-channel (mean, std) of ``x / max_value``."""

    input_shape: tuple[int, ...]  # (C, H, W), or (D,) for tabular data
    num_classes: int
    train_size: int  # the published training split, before any validation share is held out
    test_size: int
    source: str
    normalisation: Normalisation | None = None
    max_value: int = 255
    torchvision_class: str | None = None  # for source="files": the torchvision.datasets class that reads them
    folder: str | None = None  # for source="files": where torchvision's files sit under the data folder
    load: Callable[[], Any] | None = None  # for source="loader": returns the dataset's DatasetSplits
    # Whether a left-right mirror of an example is an example of the same class, so that augmentation
    # multiplicity (dp_core.augment) may flip its views: true of photographs of objects (CIFAR-10), false of
    # digits and characters (a mirrored 2 or 7 is no digit). Off unless a dataset declares it.
    horizontal_flip: bool = False

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"Expected source to be one of {', '.join(SOURCES)}, but got source={self.source!r}.")
        if (self.source == "loader") != callable(self.load):
            raise ConfigError(
                f"Expected a load function exactly when source='loader', but got source={self.source!r}, "
                f"load={self.load!r}."
            )

    @property
    def from_files(self) -> bool:
        return self.source == "files"


DATASETS: Registry[DatasetFacts] = Registry("dataset")

# The usual published per-channel statistics of each training set; CIFAR-10's are those of the Opacus
# example, so accuracies stay comparable with it. Digits' pixels are counts 0..16, normalised as x/16 with
# constants never recomputed: statistics computed on every load would make each example's input depend on
# every other training example, an un-noised release of the training data outside the privacy accounting.
# They are the mean and std once computed from the fixed training split, written in full so that every
# digits input stays bit for bit as it was, and with it every earlier digits result.
DATASETS.register(
    "digits",
    DatasetFacts(
        input_shape=(1, 8, 8),
        num_classes=10,
        train_size=1437,
        test_size=360,
        source="bundled",
        normalisation=((0.30538339422407795,), (0.3761191680900195,)),
        max_value=16,
    ),
)
DATASETS.register(
    "mnist",
    DatasetFacts(
        input_shape=(1, 28, 28),
        num_classes=10,
        train_size=60_000,
        test_size=10_000,
        source="files",
        normalisation=((0.1307,), (0.3081,)),
        torchvision_class="MNIST",
        folder="MNIST/raw",
    ),
)
DATASETS.register(
    "fashion_mnist",
    DatasetFacts(
        input_shape=(1, 28, 28),
        num_classes=10,
        train_size=60_000,
        test_size=10_000,
        source="files",
        normalisation=((0.2860,), (0.3530,)),
        torchvision_class="FashionMNIST",
        folder="FashionMNIST/raw",
    ),
)
DATASETS.register(
    "cifar10",
    DatasetFacts(
        input_shape=(3, 32, 32),
        num_classes=10,
        train_size=50_000,
        test_size=10_000,
        source="files",
        normalisation=((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        torchvision_class="CIFAR10",
        folder="cifar-10-batches-py",
        horizontal_flip=True,
    ),
)
# The synthetic stand-ins (dp_core.synthetic): the real datasets' shapes; the small ones for quick CPU
# runs, the _full ones with the real sizes, so that sampling rates and planned ε equal the real ones.
for _name, _shape, _train, _test in (
    ("synthetic_cifar10", (3, 32, 32), 1_000, 500),
    ("synthetic_mnist", (1, 28, 28), 1_000, 500),
    ("synthetic_cifar10_full", (3, 32, 32), 50_000, 10_000),
    ("synthetic_mnist_full", (1, 28, 28), 60_000, 10_000),
):
    DATASETS.register(
        _name,
        DatasetFacts(
            input_shape=_shape,
            num_classes=10,
            train_size=_train,
            test_size=_test,
            source="generated",
            horizontal_flip=_name.startswith("synthetic_cifar10"),  # stand-ins augmented as the real ones are
        ),
    )
del _name, _shape, _train, _test

#: The built-in datasets read from files under a data folder (torchvision's layout); the others are
#: generated or bundled, and have nothing to fetch.
FILE_DATASETS = frozenset(name for name, facts in DATASETS.items() if facts.from_files)


def validation_size(train_size: int, fraction: float) -> int:
    """How many of ``train_size`` examples a validation split of ``fraction`` holds (scikit-learn's rounding)."""
    return math.ceil(fraction * train_size) if fraction > 0 else 0


def canonical_train_size(name: str | DatasetSpec, *, validation_fraction: float = 0.0) -> int:
    """Number of examples trained on for dataset ``name`` (its training split less validation), without loading it.

    An own dataset (a :class:`~dp_core.dataset_spec.DatasetSpec`) has no facts before it is read: its size is
    that of the copy this process holds (:func:`dp_core.own_data.own_dataset`, which reads it on first use).

    Raises:
        ConfigError: ``name`` is not a registered dataset, or ``validation_fraction`` is not in [0, 0.5).
    """
    require_in_range(validation_fraction, key="validation_fraction", low=0.0, high=0.5, high_open=True)
    if isinstance(name, DatasetSpec):
        from dp_core.own_data import own_dataset  # imported here: this module stays free of torch until then

        splits = own_dataset(name).splits
        if splits.validation is not None:  # its own validation split, used instead of holding one out
            return len(splits.train)
        train_size = len(splits.train)
    else:
        train_size = DATASETS.get(name).train_size
    return train_size - validation_size(train_size, validation_fraction)
