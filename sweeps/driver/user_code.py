"""The user's own code in a sweep: its models checked on the driver before anything starts, and
its modules shipped to Ray's workers through Ray's runtime environment.

A space that names ``model: "module:function"`` has code folders (:attr:`SearchSpace.code`: the
space file's folder, or its ``code:`` list). Every top-level module (``*.py``) and package (a folder
with ``__init__.py``) of those folders travels as one of Ray's ``py_modules``, so that a worker
imports ``mynet`` as the driver does, on local Ray and on a cluster, with nothing installed by
hand. Only code travels: data files beside the space (the dataset's ``path``) are never packed,
and a package's data files are excluded by name; the data reaches the workers on its own way.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dp_core.config import ConfigError, TrainConfig
from dp_core.dataset_facts import DATASETS
from dp_core.dataset_spec import DatasetSpec
from dp_core.federated import split_flat
from dp_core.models import build_configured_model
from dp_core.own_data import own_dataset
from dp_core.user_code import is_reference
from sweeps.space import SearchSpace
from sweeps.space.model import candidate_axis_values

__all__ = ["DATA_EXCLUDES", "check_own_models", "code_modules", "code_runtime_env", "modules_of"]

#: Never packed with a package of the user's code: data, checkpoints, caches (Ray also honours a
#: folder's .gitignore and .rayignore).
DATA_EXCLUDES = (
    "__pycache__", ".git", "*.npz", "*.npy", "*.csv", "*.parquet", "*.pt", "*.pth", "*.ckpt", "*.h5",
    "*.pkl", "*.zip", "*.tar", "*.tar.gz", "mlruns", "mlflow.db", "dpsweep_results",
)  # fmt: skip
# Ray refuses a package of this size or more (Ray 2.60's GCS_STORAGE_MAX_SIZE: its gRPC message limit).
_RAY_PACKAGE_LIMIT = int(os.environ.get("RAY_max_grpc_message_size", 512 * 1024 * 1024))


def code_modules(space: SearchSpace) -> list[Path]:
    """The top-level modules and packages of the space's code folders, in folder then name order."""
    return modules_of(space.code)


def modules_of(folders: Sequence[str]) -> list[Path]:
    """The top-level modules (``*.py``) and packages (folders with ``__init__.py``) of ``folders``."""
    modules = []
    for folder in folders:
        for entry in sorted(Path(folder).iterdir()):
            if entry.name.startswith(".") or entry.name == "__pycache__":
                continue
            if (entry.is_file() and entry.suffix == ".py") or (entry.is_dir() and (entry / "__init__.py").is_file()):
                modules.append(entry)
    return modules


def code_runtime_env(space: SearchSpace, *, in_job: bool | None = None) -> dict[str, Any] | None:
    """Ray's runtime environment that carries the space's code to the workers (None: no code).

    Args:
        space: the loaded space.
        in_job: whether the driver runs inside a Ray Job (default: as its environment says). A
            job's own runtime environment already has ``excludes`` (sweeps.submit), and Ray refuses
            to merge a driver's environment that sets a key the job's sets, so then only
            ``py_modules`` is given.

    Raises:
        ConfigError: a package of the code is larger than Ray accepts.
    """
    modules = code_modules(space)
    if not modules:
        return None
    excludes = [*DATA_EXCLUDES, *_data_paths_inside(space, modules)]
    for module in modules:
        size = _packed_size(module, excludes)
        if size >= _RAY_PACKAGE_LIMIT:
            raise ConfigError(
                f"Expected the code of {space.source} to fit in one of Ray's packages (< "
                f"{_RAY_PACKAGE_LIMIT / 2**20:.0f} MiB), but its package {module} holds {size / 2**20:.0f} MiB. Move "
                "data and large files out of it (the dataset is never shipped with the code), list them in a "
                ".rayignore in that folder, or list only the folders of the code under code: in the space."
            )
    env: dict[str, Any] = {"py_modules": [str(module) for module in modules]}
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ if in_job is None else in_job
    if not in_job:
        env["excludes"] = excludes
    return env


def _data_paths_inside(space: SearchSpace, modules: list[Path]) -> list[str]:
    """Exclude patterns for the dataset's files (``path``, ``test_path``) that lie inside a shipped package."""
    dataset = space.fixed.get("dataset")
    paths = [dataset.get(key) for key in ("path", "test_path")] if isinstance(dataset, Mapping) else []
    patterns = []
    for raw in paths:
        if not isinstance(raw, str):
            continue
        target = (space.source.parent / raw).resolve()
        for module in modules:
            if module.is_dir() and target.is_relative_to(module.resolve()):
                patterns.append("/" + target.relative_to(module.resolve()).as_posix())
    return patterns


def _packed_size(module: Path, excludes: list[str]) -> int:
    """The bytes Ray would pack for ``module``: its files less those an exclude pattern matches (a
    name pattern matches any part of the path; ``/a/b`` one path from the package's top)."""
    if module.is_file():
        return module.stat().st_size

    def excluded(relative: Path) -> bool:
        anchored = "/" + relative.as_posix()
        return any(
            anchored == pattern or anchored.startswith(pattern + "/")
            if pattern.startswith("/")
            else any(fnmatch.fnmatch(part, pattern) for part in relative.parts)
            for pattern in excludes
        )

    return sum(
        path.stat().st_size for path in module.rglob("*") if path.is_file() and not excluded(path.relative_to(module))
    )


def check_own_models(space: SearchSpace) -> None:
    """Build every distinct own model the space's trials would build, for its dataset, once here.

    Opacus' checks and the output's shape are checked on the driver, before Ray or MLflow start:
    a model Opacus cannot train, or with the wrong number of outputs, is refused (exit 2) rather
    than failing in every trial. Zoo models without ``model_kwargs`` are known to build and skipped.

    Raises:
        ConfigError: a model that does not build, that Opacus refuses, or whose output does not
            match the dataset's classes; the message names the space file.
    """
    seen: set[str] = set()
    for config in _candidate_configs(space):
        settings = config.model
        if not is_reference(settings.model) and not settings.model_kwargs:
            continue
        shape = _dataset_shape(config)
        if shape is None:
            continue
        identity = repr((settings, config.code, shape))
        if identity in seen:
            continue
        seen.add(identity)
        input_shape, num_classes = shape
        with torch.random.fork_rng(devices=[]):  # leave the driver's global RNG as it was
            try:
                build_configured_model(config, input_shape=input_shape, num_classes=num_classes)
            except ConfigError as error:
                dataset = getattr(config.data.dataset, "display_name", config.data.dataset)
                raise ConfigError(f"{error} (in {space.source}, for dataset {dataset!r})") from None


def _candidate_configs(space: SearchSpace) -> Iterator[TrainConfig]:
    """The training configuration of each trial the space's checks build (a federated trial's clients')."""
    for axis_values in candidate_axis_values(space):
        values = space.trial_config(axis_values)
        if space.kind == "federated":
            yield split_flat(values, where=str(space.source))[0]
        else:
            yield TrainConfig.from_dict(values, where=str(space.source))


def _dataset_shape(config: TrainConfig) -> tuple[tuple[int, ...], int] | None:
    """The dataset's input shape and class count, as known before it is loaded (None: not known here)."""
    dataset = config.data.dataset
    if isinstance(dataset, DatasetSpec):  # read once by the driver before (sweeps.driver.prepare_data.read_own)
        splits = own_dataset(dataset).splits
        return splits.input_shape, splits.num_classes
    if isinstance(dataset, str) and dataset in DATASETS:
        facts = DATASETS.get(dataset)
        return facts.input_shape, facts.num_classes
    return None
