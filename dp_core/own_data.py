"""A user's own dataset (:class:`~dp_core.dataset_spec.DatasetSpec`) read, checked, and kept once per process.

:func:`read_dataset` reads a spec's files (or calls its loader), refuses what the trainer cannot
train on with a :class:`ConfigError` naming the file and the fault (a missing file, arrays of the
wrong rank or of mismatched lengths, labels that are not classes, NaN or infinite features), and
applies only declared, public transforms: ``normalisation`` constants, or ``bounds`` the inputs
are clipped to. No mean, std, minimum or maximum is ever computed from the data.

:func:`own_dataset` is the process-local provider every loader of ``dp_core`` asks: a sweep's
driver reads the data once and its workers :func:`provide` the copy they got from Ray's object
store, so that no trial reads the files again; ``python -m dp_core.train`` reads them on first use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dp_core.dataset_spec import DatasetSpec
from dp_core.errors import ConfigError
from dp_core.splits import DatasetSplits

__all__ = ["OwnDataset", "own_dataset", "provide", "provided", "read_dataset"]

_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OwnDataset:
    """An own dataset read: its splits (``validation`` the file's own, if it has one), a digest of
    every value trained or tested on, and the caveats its reading calls for (printed by a sweep)."""

    spec: DatasetSpec
    splits: DatasetSplits
    digest: str
    caveats: tuple[str, ...] = ()

    @property
    def train_size(self) -> int:
        return len(self.splits.train)


_PROVIDED: dict[DatasetSpec, OwnDataset] = {}


def provide(dataset: OwnDataset) -> None:
    """Keep ``dataset`` for this process: :func:`own_dataset` of its spec returns it without reading."""
    _PROVIDED[dataset.spec] = dataset


def provided() -> tuple[OwnDataset, ...]:
    """Every own dataset this process holds (a sweep's driver: those its space names, read once)."""
    return tuple(_PROVIDED.values())


def own_dataset(spec: DatasetSpec) -> OwnDataset:
    """The dataset ``spec`` names: the copy provided to this process, else read (once) from its files."""
    if spec not in _PROVIDED:
        provide(read_dataset(spec))
    return _PROVIDED[spec]


def read_dataset(spec: DatasetSpec) -> OwnDataset:
    """Read and check ``spec``'s data; raises ConfigError on anything the trainer cannot train on.

    Example:
        >>> import tempfile, numpy as np
        >>> folder = tempfile.mkdtemp()
        >>> x, y = np.zeros((20, 3), np.float32), np.arange(20) % 2
        >>> np.savez(f"{folder}/d.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
        >>> data = read_dataset(DatasetSpec.from_mapping({"format": "npz", "path": "d.npz", "classes": 2}, base=folder))
        >>> data.splits.input_shape, data.splits.num_classes, len(data.splits.train)
        ((3,), 2, 20)
    """
    where = f"dataset {spec.source}"
    if spec.path is not None and not Path(spec.path).exists():
        raise ConfigError(
            f"Expected dataset.path to exist, but got dataset.path={spec.path!r}: no such file or folder."
        )
    if spec.test_path is not None and not Path(spec.test_path).exists():
        raise ConfigError(
            f"Expected dataset.test_path to exist, but got dataset.test_path={spec.test_path!r}: no such file."
        )
    if spec.format == "npz":
        arrays, caveats = _read_npz(spec), []
    elif spec.format in ("csv", "parquet"):
        arrays, caveats = _read_table(spec)
    elif spec.format == "image_folder":
        arrays, caveats = _read_image_folder(spec)
    else:
        arrays, caveats = _call_loader(spec), []
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise ConfigError(f"Expected both x_val and y_val in {where}, or neither, but got only one of them.")
    labels, num_classes, label_caveats = _classes(spec, arrays, where=where)
    features = _features(spec, arrays, where=where)
    shape = tuple(int(d) for d in features["x_train"].shape[1:])
    digest = hashlib.sha256()
    for key in sorted(features):
        digest.update(key.encode() + np.ascontiguousarray(features[key]).tobytes())
        digest.update(np.ascontiguousarray(labels[key.replace("x_", "y_")]).tobytes())

    def split(part: str) -> TensorDataset:
        return TensorDataset(torch.from_numpy(features[f"x_{part}"]), torch.from_numpy(labels[f"y_{part}"]))

    splits = DatasetSplits(
        name=spec.display_name,
        train=split("train"),
        test=split("test"),
        num_classes=num_classes,
        input_shape=shape,  # type: ignore[arg-type]  # (C, H, W) or (D,)
        validation=split("val") if "x_val" in features else None,
    )
    return OwnDataset(spec=spec, splits=splits, digest=digest.hexdigest()[:16], caveats=(*caveats, *label_caveats))


# ---------------------------------------------------------------------------------------------- readers


def _read_npz(spec: DatasetSpec) -> dict[str, np.ndarray]:
    try:
        with np.load(str(spec.path), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"Expected dataset.path to be a NumPy .npz file, but reading {spec.path} failed: {error}"
        ) from None
    missing = [key for key in _ARRAYS if key not in arrays]
    if missing:
        raise ConfigError(
            f"Expected the arrays {', '.join(_ARRAYS)} (and optionally x_val, y_val) in {spec.path}, but "
            f"{', '.join(missing)} missing; it holds {', '.join(sorted(arrays)) or 'none'}."
        )
    return {key: arrays[key] for key in (*_ARRAYS, "x_val", "y_val") if key in arrays}


def _read_table(spec: DatasetSpec) -> tuple[dict[str, np.ndarray], list[str]]:
    import pandas as pd  # here: only tabular datasets need it

    def read(path: str) -> Any:
        try:
            return pd.read_csv(path) if spec.format == "csv" else pd.read_parquet(path)
        except ImportError as error:
            raise ConfigError(f"Reading format: parquet needs pyarrow (pip install pyarrow): {error}") from None
        except Exception as error:  # noqa: BLE001 - pandas' parser errors have no common base
            raise ConfigError(f"Expected {path} to be a {spec.format} file, but reading it failed: {error}") from None

    frames = {"train": read(str(spec.path))}
    if spec.test_path is not None:
        frames["test"] = read(spec.test_path)
    for part, frame in frames.items():
        if spec.label not in frame.columns:
            file = spec.path if part == "train" else spec.test_path
            raise ConfigError(
                f"Expected the label column dataset.label={spec.label!r} in {file}, but its columns are "
                f"{', '.join(map(str, frame.columns))}."
            )
    features = [c for c in frames["train"].columns if c != spec.label]
    if "test" in frames and [c for c in frames["test"].columns if c != spec.label] != features:
        raise ConfigError(
            f"Expected the test file {spec.test_path} to have the training file's feature columns "
            f"({', '.join(map(str, features))}), but got {', '.join(map(str, frames['test'].columns))}."
        )
    arrays: dict[str, np.ndarray] = {}
    for part, frame in frames.items():
        non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
        if non_numeric:
            raise ConfigError(
                f"Expected numeric feature columns in {spec.path}, but {', '.join(map(str, non_numeric))} "
                "are not (encode categories as numbers before the sweep)."
            )
        arrays[f"x_{part}"] = frame[features].to_numpy(dtype=np.float64)
        arrays[f"y_{part}"] = frame[spec.label].to_numpy()
    if "test" not in frames:
        arrays.update(_split_off_test(spec, arrays.pop("x_train"), arrays.pop("y_train")))
    return arrays, []


def _split_off_test(spec: DatasetSpec, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    counts = np.unique(y.astype(str), return_counts=True)[1]
    # Stratified where every class has two examples, with the stated split_seed: the same split on every machine.
    stratify = y.astype(str) if counts.min() >= 2 else None
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=spec.test_fraction, stratify=stratify, random_state=spec.split_seed
        )
    except ValueError as error:
        raise ConfigError(
            f"Expected dataset.test_fraction={spec.test_fraction} to leave examples on both sides of {spec.path} "
            f"({len(y)} rows), but the split failed: {error}"
        ) from None
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _read_image_folder(spec: DatasetSpec) -> tuple[dict[str, np.ndarray], list[str]]:
    from PIL import Image  # here: only image folders need it

    root = Path(str(spec.path))
    parts = {part: root / part for part in ("train", "test")}
    for part, folder in parts.items():
        if not folder.is_dir():
            raise ConfigError(f"Expected a {part}/ folder of class folders in {root}, but {folder} is not a folder.")
    found = sorted(p.name for p in parts["train"].iterdir() if p.is_dir())
    declared = [str(c) for c in spec.classes] if isinstance(spec.classes, tuple) else None
    classes = declared if declared is not None else found
    if declared is not None and set(found) - set(declared):
        raise ConfigError(
            f"Expected the class folders of {parts['train']} to be among dataset.classes={declared}, but got "
            f"{sorted(set(found) - set(declared))} as well."
        )
    size = int(spec.image_size or 0)
    arrays: dict[str, np.ndarray] = {}
    for part, folder in parts.items():
        images, labels = [], []
        for index, name in enumerate(classes):
            files = sorted(f for f in (folder / name).glob("*") if f.suffix.lower() in _IMAGE_SUFFIXES)
            for file in files:
                try:
                    with Image.open(file) as image:
                        pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
                except OSError as error:
                    raise ConfigError(f"Expected {file} to be an image, but reading it failed: {error}") from None
                images.append(pixels.transpose(2, 0, 1))  # H x W x C -> C x H x W
                labels.append(index)
        if not images:
            raise ConfigError(f"Expected images in the class folders of {folder}, but found none.")
        # x / 255: a fixed rescaling of pixel values, not a statistic of the images.
        arrays[f"x_{part}"] = np.stack(images).astype(np.float32) / 255.0
        arrays[f"y_{part}"] = np.asarray(labels, dtype=np.int64)
    caveats = [] if declared is not None else [_label_caveat(f"the class folders {classes}")]
    return arrays, caveats


def _call_loader(spec: DatasetSpec) -> dict[str, np.ndarray]:
    module_name, _, function_name = str(spec.loader).partition(":")
    folder = str(spec.loader_dir)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any failure to import the user's module is a configuration error
        raise ConfigError(
            f"Expected dataset.loader={spec.loader!r} to name a module that imports (looked in {folder} and on "
            f"sys.path), but importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(
            f"Expected dataset.loader={spec.loader!r} to name a function of module {module_name!r} "
            f"({getattr(module, '__file__', '?')}), but it has no {function_name!r}."
        )
    try:
        returned = function()
    except Exception as error:  # noqa: BLE001
        raise ConfigError(f"The dataset loader {spec.loader} raised {type(error).__name__}: {error}") from error
    if isinstance(returned, tuple) and len(returned) in (4, 6):
        returned = dict(zip((*_ARRAYS, "x_val", "y_val"), returned))
    if not isinstance(returned, Mapping) or any(key not in returned for key in _ARRAYS):
        raise ConfigError(
            f"Expected dataset.loader {spec.loader} to return a mapping with {', '.join(_ARRAYS)} (optionally "
            f"x_val, y_val) or the tuple (x_train, y_train, x_test, y_test), but got {type(returned).__name__}."
        )
    return {key: np.asarray(value) for key, value in returned.items() if key in (*_ARRAYS, "x_val", "y_val")}


# ---------------------------------------------------------------------------------------------- checks


def _label_caveat(what: str) -> str:
    return (
        f"the classes were read from the data ({what}): the label set is itself a statistic of the data, "
        "released outside the privacy accounting; declare dataset.classes in the space to avoid it"
    )


def _classes(
    spec: DatasetSpec, arrays: dict[str, np.ndarray], *, where: str
) -> tuple[dict[str, np.ndarray], int, list[str]]:
    """Every split's labels as int64 class indices, the class count, and the caveat if it was read from the data."""
    raw = {key: np.asarray(value) for key, value in arrays.items() if key.startswith("y_")}
    for key, y in raw.items():
        if y.ndim != 1:
            raise ConfigError(
                f"Expected {key} of {where} to be one label per example (rank 1), but got shape {y.shape}."
            )
    if spec.format == "image_folder":
        count = len(spec.classes) if isinstance(spec.classes, tuple) else int(max(y.max() for y in raw.values())) + 1
        return {k: v.astype(np.int64) for k, v in raw.items()}, max(count, 2), []
    caveats: list[str] = []
    if isinstance(spec.classes, tuple):
        index = {value: i for i, value in enumerate(spec.classes)}
        index.update({str(value): i for i, value in enumerate(spec.classes)})
        labels = {}
        for key, y in raw.items():
            values = [v.item() if isinstance(v, np.generic) else v for v in y]
            unknown = sorted({str(v) for v in values if v not in index and str(v) not in index})
            if unknown:
                raise ConfigError(
                    f"Expected every label of {key} in {where} to be one of dataset.classes={list(spec.classes)}, "
                    f"but got {', '.join(unknown[:5])}."
                )
            labels[key] = np.asarray([index[v] if v in index else index[str(v)] for v in values], dtype=np.int64)
        return labels, len(spec.classes), caveats
    labels = {}
    for key, y in raw.items():
        if y.dtype.kind in "OUS" and spec.classes is None and spec.format in ("csv", "parquet"):
            return _classes(
                dataclasses.replace(spec, classes=tuple(sorted({str(v) for y in raw.values() for v in y}))),
                arrays,
                where=where,
            )[:2] + ([_label_caveat(f"the label values of column {spec.label!r}")],)
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise ConfigError(
                    f"Expected integer class labels in {key} of {where}, but got non-integer values (e.g. "
                    f"{y[~(np.isfinite(y) & (y == np.round(y)))][0]!r}). The trainer is a classifier: a float target "
                    "(regression) is not supported; bin it into classes first."
                )
        elif y.dtype.kind not in "iub":
            raise ConfigError(f"Expected integer class labels in {key} of {where}, but got dtype {y.dtype}.")
        labels[key] = y.astype(np.int64)
    if spec.classes is None:
        count = int(max(int(y.max()) for y in labels.values() if y.size)) + 1
        caveats.append(_label_caveat(f"{count} classes, from the largest label"))
    else:
        count = int(spec.classes)
    for key, y in labels.items():
        if y.size and (y.min() < 0 or y.max() >= count):
            bad = y[(y < 0) | (y >= count)][0]
            raise ConfigError(
                f"Expected labels in {key} of {where} in [0, {count - 1}] (dataset.classes={count}), but got {bad}."
            )
    return labels, max(count, 2), caveats


def _features(spec: DatasetSpec, arrays: dict[str, np.ndarray], *, where: str) -> dict[str, np.ndarray]:
    """Every split's features as float32, checked and transformed by the declared constants only."""
    features = {}
    for key in ("x_train", "x_test", "x_val"):
        if key not in arrays:
            continue
        x = np.asarray(arrays[key])
        labels = arrays[key.replace("x_", "y_")]
        if x.ndim not in (2, 4):
            raise ConfigError(
                f"Expected {key} of {where} to be N x D (tabular) or N x C x H x W (images), but got shape {x.shape} "
                f"(rank {x.ndim})."
            )
        if len(x) != len(labels):
            raise ConfigError(
                f"Expected {key} and {key.replace('x_', 'y_')} of {where} to have one label per example, but got "
                f"{len(x)} examples and {len(labels)} labels."
            )
        if len(x) == 0:
            raise ConfigError(f"Expected examples in {key} of {where}, but it is empty.")
        if x.dtype.kind not in "fiub":
            raise ConfigError(f"Expected numeric features in {key} of {where}, but got dtype {x.dtype}.")
        x = x.astype(np.float32)
        finite = np.isfinite(x)
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0])
            raise ConfigError(
                f"Expected finite features in {key} of {where}, but {int((~finite).sum())} values are NaN or "
                f"infinite (the first in example {row}). Impute or drop them before the sweep (with public rules)."
            )
        features[key] = _transform(spec, x, key=key, where=where)
    shapes = {key: x.shape[1:] for key, x in features.items()}
    if len(set(shapes.values())) > 1:
        raise ConfigError(f"Expected every split of {where} to have one example shape, but got {shapes}.")
    return features


def _transform(spec: DatasetSpec, x: np.ndarray, *, key: str, where: str) -> np.ndarray:
    """The declared transform: (x - mean) / std, or x clipped to [low, high] and mapped onto [0, 1]."""
    pair = spec.normalisation if spec.normalisation is not None else spec.bounds
    if pair is None:
        return np.ascontiguousarray(x)
    width = x.shape[1]  # features (N x D) or channels (N x C x H x W)
    first, second = (np.asarray(v, dtype=np.float32) for v in pair)
    for values in (first, second):
        if values.size not in (1, width):
            name = "normalisation" if spec.normalisation is not None else "bounds"
            raise ConfigError(
                f"Expected dataset.{name} to give one value or one per {'feature' if x.ndim == 2 else 'channel'} "
                f"({width}) of {where}, but got {values.size}."
            )
    view = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    first, second = first.reshape(view), second.reshape(view)
    if spec.normalisation is not None:
        return np.ascontiguousarray((x - first) / second, dtype=np.float32)
    # Clipping to declared bounds bounds every input without looking at the data.
    return np.ascontiguousarray((np.clip(x, first, second) - first) / (second - first), dtype=np.float32)
