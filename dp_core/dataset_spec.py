"""A user's own dataset, as a space file or a config names it: ``dataset: {format: npz, path: ...}``.

A leaf module (no torch, no numpy) like :mod:`dp_core.dataset_facts`: a :class:`DatasetSpec` says
where the data is and how to read it, and is checked here without reading anything.
:mod:`dp_core.own_data` reads it. Paths are absolute once a spec is built (a space resolves them
against its own folder, a config file against the working directory), so that a configuration
that reaches a worker, or ``best_per_epsilon.json``, names the same files.

No statistic of the private data is fitted here or in the reader: normalisation constants and
feature bounds are declared (public knowledge), or the features are used as they are.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dp_core.errors import ConfigError, require, require_choice, require_in_range

__all__ = ["FORMATS", "SPEC_KEYS", "DatasetSpec", "dataset_name"]

#: How a dataset's files are read (``dp_core.own_data``). ``parquet`` needs pyarrow.
FORMATS = ("npz", "csv", "parquet", "image_folder", "python")
#: Keys a ``dataset:`` mapping may have.
SPEC_KEYS = (
    "format", "path", "test_path", "test_fraction", "split_seed", "label", "classes", "image_size", "loader",
    "loader_dir", "normalisation", "bounds", "name", "horizontal_flip",
)  # fmt: skip
_PATH_KEYS = ("path", "test_path", "loader_dir")
_LOADER = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """Where an own dataset is and how it is read; every field hashable, so a spec keys a cache.

    Args:
        format: one of :data:`FORMATS`.
        path: the file (npz, csv, parquet) or folder (image_folder, with ``train/`` and ``test/``).
        test_path: a CSV/Parquet file of the test split (else ``test_fraction``).
        test_fraction: the share of a CSV/Parquet file held out as the test split, stratified by label
            with the fixed ``split_seed`` (default 0): the split is part of the dataset's definition.
        label: a CSV/Parquet file's label column.
        classes: the declared classes: their count K (labels 0..K-1), or their values in order (a CSV's
            label strings, an image folder's class folders). Undeclared, they are read from the data,
            with a caveat: the label set is itself a statistic of the data.
        image_size: an image folder's images are resized to image_size x image_size.
        loader: ``"module:function"`` for format python: ``function()`` returns the splits.
        loader_dir: the folder ``loader``'s module is imported from (a space: its own folder).
        normalisation: ``(mean, std)``, one value per channel or feature (public constants): x -> (x - mean) / std.
        bounds: ``(low, high)``, one value or one per feature: inputs are clipped to them and mapped onto [0, 1].
        name: the name shown and logged (default: the file's or the loader's).
        horizontal_flip: whether a left-right mirror of an image is an image of the same class, so that
            augmentation multiplicity (``augmult``) may flip its views; off unless declared.
    """

    format: str
    path: str | None = None
    test_path: str | None = None
    test_fraction: float | None = None
    split_seed: int = 0
    label: str | None = None
    classes: int | tuple[Any, ...] | None = None
    image_size: int | None = None
    loader: str | None = None
    loader_dir: str | None = None
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    name: str | None = None
    horizontal_flip: bool = False

    def __post_init__(self) -> None:
        require_choice(self.format, key="dataset.format", choices=FORMATS)
        require(
            isinstance(self.horizontal_flip, bool),
            key="dataset.horizontal_flip",
            value=self.horizontal_flip,
            allowed="to be true or false",
        )
        tabular = self.format in ("csv", "parquet")
        needs_path = self.format != "python"
        require(
            (self.path is not None) == needs_path,
            key="dataset.path",
            value=self.path,
            allowed=f"to be {'a path' if needs_path else 'absent (a python loader returns the data)'} "
            f"with format: {self.format}",
        )
        for key in ("path", "test_path", "loader_dir"):
            value = getattr(self, key)
            require(
                value is None or (isinstance(value, str) and Path(value).is_absolute()),
                key=f"dataset.{key}",
                value=value,
                allowed="to be an absolute path (DatasetSpec.from_mapping resolves relative ones)",
            )
        if self.test_path is not None or self.test_fraction is not None or self.label is not None:
            require(
                tabular, key="dataset.format", value=self.format, allowed="to be csv or parquet with test_path, "
                "test_fraction or label",
            )  # fmt: skip
        if tabular:
            require(self.label is not None, key="dataset.label", value=None, allowed=f"with format: {self.format}")
            require(
                (self.test_path is None) != (self.test_fraction is None),
                key="dataset.test_path",
                value=self.test_path,
                allowed=f"or dataset.test_fraction, exactly one of them (test_fraction={self.test_fraction!r})",
            )
        if self.test_fraction is not None:
            require_in_range(self.test_fraction, key="dataset.test_fraction", low=0.0, high=1.0, low_open=True,
                             high_open=True)  # fmt: skip
        require(
            isinstance(self.split_seed, int) and not isinstance(self.split_seed, bool) and self.split_seed >= 0,
            key="dataset.split_seed",
            value=self.split_seed,
            allowed="to be an integer >= 0",
        )
        if self.format == "image_folder":
            ok = isinstance(self.image_size, int) and not isinstance(self.image_size, bool) and self.image_size >= 1
            require(ok, key="dataset.image_size", value=self.image_size, allowed="to be an integer >= 1")
        else:
            require(self.image_size is None, key="dataset.image_size", value=self.image_size,
                    allowed="only with format: image_folder")  # fmt: skip
        if self.format == "python":
            ok = isinstance(self.loader, str) and _LOADER.fullmatch(self.loader) is not None
            require(ok, key="dataset.loader", value=self.loader, allowed='to be "module:function"')
        else:
            require(self.loader is None, key="dataset.loader", value=self.loader, allowed="only with format: python")
        if self.classes is not None:
            count_ok = isinstance(self.classes, int) and not isinstance(self.classes, bool) and self.classes >= 2
            list_ok = (
                isinstance(self.classes, tuple)
                and len(self.classes) >= 2
                and len(set(self.classes)) == len(self.classes)
            )
            require(count_ok or list_ok, key="dataset.classes", value=self.classes,
                    allowed="to be a class count >= 2 or a list of at least 2 distinct class values")  # fmt: skip
        if self.normalisation is not None and self.bounds is not None:
            raise ConfigError(
                "Expected at most one of dataset.normalisation and dataset.bounds, but got both "
                f"(normalisation={self.normalisation!r}, bounds={self.bounds!r})."
            )
        for key, pair, positive in (("normalisation", self.normalisation, True), ("bounds", self.bounds, False)):
            if pair is not None:
                _check_pair(pair, key=f"dataset.{key}", second_positive=positive)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, base: str | Path | None = None) -> DatasetSpec:
        """The spec a ``dataset:`` mapping describes; relative paths resolve against ``base`` (default: the
        working directory).

        Raises:
            ConfigError: an unknown key, or a value its rule refuses.

        Example:
            >>> spec = DatasetSpec.from_mapping({"format": "npz", "path": "data.npz"}, base="/data")
            >>> spec.path, spec.display_name
            ('/data/data.npz', 'data.npz')
        """
        if not isinstance(raw, Mapping):
            raise ConfigError(f"Expected dataset to be a zoo name or a mapping, but got dataset={raw!r}.")
        values = dict(raw)
        for key in values:
            if key not in SPEC_KEYS:
                close = difflib.get_close_matches(str(key), SPEC_KEYS, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"Unknown key {key!r} in dataset.{hint} Known keys: {', '.join(SPEC_KEYS)}.")
        require("format" in values, key="dataset.format", value=None, allowed=f"to be one of {', '.join(FORMATS)}")
        folder = Path(base) if base is not None else Path.cwd()
        for key in _PATH_KEYS:
            if isinstance(values.get(key), str):
                values[key] = str((folder / Path(values[key]).expanduser()).resolve())
        if values.get("format") == "python" and values.get("loader_dir") is None:
            values["loader_dir"] = str(folder.resolve())
        if isinstance(values.get("classes"), list):
            values["classes"] = tuple(values["classes"])
        for key, first, second in (("normalisation", "mean", "std"), ("bounds", "low", "high")):
            if key in values and values[key] is not None:
                values[key] = _pair(values[key], key=key, first=first, second=second)
        return cls(**values)

    def to_mapping(self) -> dict[str, Any]:
        """The mapping :meth:`from_mapping` reads back (only the keys that are set; JSON-ready)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if (
                value is None
                or (field.name == "split_seed" and value == 0)
                or (field.name == "horizontal_flip" and not value)
            ):
                continue
            if field.name == "classes" and isinstance(value, tuple):
                value = list(value)
            if field.name in ("normalisation", "bounds"):
                first, second = ("mean", "std") if field.name == "normalisation" else ("low", "high")
                value = {first: list(value[0]), second: list(value[1])}
            out[field.name] = value
        return out

    @property
    def display_name(self) -> str:
        if self.name is not None:
            return self.name
        return self.loader if self.path is None else Path(self.path).name  # type: ignore[return-value]

    @property
    def source(self) -> str:
        """Where the data comes from: its file or folder, or its loader."""
        return self.path if self.path is not None else f"{self.loader} (from {self.loader_dir})"  # type: ignore[return-value]


def dataset_name(dataset: str | DatasetSpec) -> str:
    """The name a dataset is shown by: a zoo name as it is, an own dataset's display name."""
    return dataset.display_name if isinstance(dataset, DatasetSpec) else str(dataset)


def _pair(raw: Any, *, key: str, first: str, second: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``{first: v or [v...], second: ...}`` (or a two-item list) -> two tuples of floats."""
    if isinstance(raw, Mapping) and set(raw) == {first, second}:
        a, b = raw[first], raw[second]
    elif isinstance(raw, (list, tuple)) and len(raw) == 2:
        a, b = raw
    else:
        raise ConfigError(
            f"Expected dataset.{key} to be {{{first}: ..., {second}: ...}} (a number or one per channel or "
            f"feature each), but got dataset.{key}={raw!r}."
        )
    as_tuple = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v,)  # noqa: E731
    return as_tuple(a), as_tuple(b)


def _check_pair(pair: Any, *, key: str, second_positive: bool) -> None:
    def numbers(values: Any) -> bool:
        return (
            isinstance(values, tuple)
            and len(values) >= 1
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        )

    ok = isinstance(pair, tuple) and len(pair) == 2 and numbers(pair[0]) and numbers(pair[1])
    ok = ok and (len(pair[0]) == len(pair[1]) or 1 in (len(pair[0]), len(pair[1])))
    require(ok, key=key, value=pair, allowed="to be two lists of finite numbers of equal length (or single numbers)")
    if second_positive:
        require(all(v > 0 for v in pair[1]), key=key, value=pair, allowed="to have every std > 0")
    else:
        low, high = pair
        pairs = zip(low * len(high), high) if len(low) == 1 else zip(low, high * len(low))
        require(all(lo < hi for lo, hi in pairs), key=key, value=pair, allowed="to have every low < high")
