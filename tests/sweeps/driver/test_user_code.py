"""sweeps.driver.user_code: own models built on the driver before anything starts, and the space's
code packed for Ray's workers (and only its code)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from dp_core.errors import ConfigError
from sweeps.driver.user_code import check_own_models, code_modules, code_runtime_env
from sweeps.space import load_space
from tests.sweeps._sweep_harness import ENV, ROOT

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing", "ignore:Secure RNG turned off")

BUILDERS = """
import math
import torch.nn as nn

def build(*, input_shape, num_classes, width=8):
    flat = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(flat, width), nn.ReLU(), nn.Linear(width, num_classes))

def three_outputs(*, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 3))

def with_batchnorm(*, input_shape, num_classes):
    return nn.Sequential(nn.Conv2d(input_shape[0], 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * input_shape[1] * input_shape[2], num_classes))
"""

SPACE = """
fixed: {{dataset: digits, model: "{model}", batch_size: 64, epochs: 1, delta: 1.0e-5 {extra}}}
axes: {{noise_multiplier: [1.0]}}
search: grid
"""


def _space(folder: Path, function: str, extra: str = "") -> tuple[Path, str]:
    module = f"driver_net_{uuid.uuid4().hex[:10]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(BUILDERS)
    path = folder / "own.yaml"
    path.write_text(SPACE.format(model=f"{module}:{function}", extra=extra))
    return path, module


def test_an_own_model_that_builds_for_the_dataset_passes(tmp_path: Path) -> None:
    path, _ = _space(tmp_path, "build")
    check_own_models(load_space(path))


def test_a_model_with_the_wrong_number_of_outputs_is_refused_naming_the_space(tmp_path: Path) -> None:
    path, _ = _space(tmp_path, "three_outputs")
    with pytest.raises(ConfigError) as caught:
        check_own_models(load_space(path))
    message = str(caught.value)
    assert "(2, 10) for a batch of 2, but got (2, 3)" in message and str(path) in message and "'digits'" in message


def test_batchnorm_is_refused_naming_the_module_and_the_fix_unless_opted_in(tmp_path: Path) -> None:
    path, _ = _space(tmp_path / "refused", "with_batchnorm")
    with pytest.raises(ConfigError) as caught:
        check_own_models(load_space(path))
    assert "1 (BatchNorm2d)" in str(caught.value) and "fix_model: true" in str(caught.value)
    opted_in, _ = _space(tmp_path / "fixed", "with_batchnorm", extra=", fix_model: true")
    check_own_models(load_space(opted_in))


def test_only_modules_and_packages_travel_never_the_data(tmp_path: Path) -> None:
    path, module = _space(tmp_path, "build")
    (tmp_path / "data.npz").write_bytes(b"0" * 1000)
    (tmp_path / "notes.txt").write_text("not code")
    package = tmp_path / "helpers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "table.csv").write_text("a,b\n")
    (tmp_path / "not_a_package").mkdir()
    space = load_space(path)
    assert [p.name for p in code_modules(space)] == [f"{module}.py", "helpers"]
    env = code_runtime_env(space, in_job=False)
    assert env is not None and env["py_modules"] == [str(tmp_path / f"{module}.py"), str(package)]
    assert "*.csv" in env["excludes"] and "*.npz" in env["excludes"]
    # In a Ray Job, the job's environment has excludes already: Ray refuses to merge a second.
    assert code_runtime_env(space, in_job=True) == {"py_modules": env["py_modules"]}


def test_a_zoo_space_ships_nothing(tmp_path: Path) -> None:
    path = tmp_path / "zoo.yaml"
    path.write_text(SPACE.format(model="mlp", extra=""))
    assert code_runtime_env(load_space(path)) is None


def test_a_package_too_big_for_ray_is_refused_before_ray_starts(tmp_path: Path) -> None:
    path, _ = _space(tmp_path, "build")
    package = tmp_path / "weights"
    package.mkdir()
    (package / "__init__.py").write_text("")
    with (package / "big.bin").open("wb") as sparse:  # sparse: no disk used, its size is what counts
        sparse.truncate(600 * 2**20)
    with pytest.raises(ConfigError, match=r"its package .*weights holds 600 MiB"):
        code_runtime_env(load_space(path))


IMPORTED_FROM = """
import importlib, json, sys
import ray

ray.init(address=sys.argv[1], runtime_env=json.loads(sys.argv[2]) or None, logging_level="ERROR")

@ray.remote
def imported_from(name):
    try:
        return importlib.import_module(name).__file__
    except ModuleNotFoundError as error:
        return repr(error)

print(ray.get(imported_from.remote(sys.argv[3]), timeout=300))
"""


def test_the_runtime_env_makes_the_module_importable_in_a_ray_worker(tmp_path: Path, ray_cluster) -> None:
    path, module = _space(tmp_path, "build")
    env = code_runtime_env(load_space(path))

    def worker_imports(runtime_env: dict | None) -> str:
        done = subprocess.run(
            [sys.executable, "-c", IMPORTED_FROM, ray_cluster.address, json.dumps(runtime_env), module],
            cwd=ROOT,  # not the space's folder: a driver there would put it on the path
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    shipped = worker_imports(env)
    # Ray's unpacked copy on the node, not the folder the space file is in.
    assert "runtime_resources" in shipped and Path(shipped).parent != tmp_path, shipped
    assert "ModuleNotFoundError" in worker_imports(None)  # without it, the worker cannot import the module


def test_a_federated_space_checks_its_clients_own_model_too(tmp_path: Path) -> None:
    path, _ = _space(tmp_path, "three_outputs")
    text = path.read_text().replace("search: grid", "search: grid\nkind: federated\nconfirm: off")
    path.write_text(text.replace("epochs: 1,", "clients: 2, rounds: 1, local_epochs: 1,"))
    with pytest.raises(ConfigError, match=r"\(2, 10\) for a batch of 2, but got \(2, 3\)"):
        check_own_models(load_space(path))
