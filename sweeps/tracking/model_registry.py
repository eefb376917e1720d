"""A bound's model into MLflow: logged on its refit run (``mlflow.pytorch.log_model``) and registered
under the space's name with the bound's alias, idempotently.

Idempotent like every write of the tracker: the version is found again by its refit run's id (tag
``dpsweep.refit_run_id``), and a model logged on that run by an attempt killed before it was
registered is registered rather than logged twice. So a resumed sweep or a replayed journal
leaves one version per bound.

MLflow's model logging goes through its fluent layer, which reads the process's tracking URI and
active experiment; both are set to the tracker's for the call and put back after
(:func:`_fluent_tracking_uri`), and the LoggedModel is created in the run's experiment first so
that it never lands in the default experiment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException
from torch import nn

__all__ = ["RUN_ID_TAG", "HOLD_REGISTRATION_ENV", "has_no_registry", "register_model"]

#: The version tag that finds a bound's version again: its refit run's id.
RUN_ID_TAG = "dpsweep.refit_run_id"
#: The LoggedModel's name on its run.
_LOGGED_NAME = "model"
#: Tests only: with this set to a path that exists, registration writes "<path>.held" after the
#: model is logged and before its version is created, and waits there until the path is removed,
#: so that a test can kill the launcher mid-registration. Unset, as outside tests, nothing is looked at.
HOLD_REGISTRATION_ENV = "DPSWEEP_TEST_HOLD_REGISTRATION"
#: How a server without a Model Registry answers its endpoints.
_NO_REGISTRY_CODES = ("ENDPOINT_NOT_FOUND", "FEATURE_DISABLED", "NOT_IMPLEMENTED")


def has_no_registry(error: BaseException) -> bool:
    """Whether ``error`` says the tracking server has no Model Registry (rather than a failed call)."""
    if isinstance(error, UnsupportedModelRegistryStoreURIException):
        return True
    return isinstance(error, MlflowException) and str(error.error_code) in _NO_REGISTRY_CODES


@contextlib.contextmanager
def _fluent_tracking_uri(tracking_uri: str) -> Iterator[None]:
    # set_tracking_uri also sets MLFLOW_TRACKING_URI (for subprocesses): that is put back as it was too.
    previous, environment = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if environment is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = environment


def _hold_if_asked() -> None:
    hold = os.environ.get(HOLD_REGISTRATION_ENV)
    if not hold or not Path(hold).exists():
        return
    Path(hold + ".held").touch()
    while Path(hold).exists():
        time.sleep(0.1)


def register_model(
    client: MlflowClient,
    *,
    tracking_uri: str,
    run_id: str,
    model: nn.Module,
    input_shape: tuple[int, int, int],
    name: str,
    alias: str,
    tags: Mapping[str, str],
    run_tag: str = RUN_ID_TAG,
) -> str:
    """Log ``model`` on run ``run_id`` and register it as a version of ``name`` with ``alias`` and
    ``tags``; returns the version. A version of ``name`` for that run already there (its tag
    ``run_tag`` holds the run id) is the one aliased (and tagged) again, not a new one.

    The input example is zeros of the input's shape, never a real example: the registry is read
    by people the training data's subjects did not consent to show their data to, and a DP
    guarantee says nothing about data copied out beside the model.
    """
    tags = {**tags, run_tag: run_id}
    found = client.search_model_versions(f"name = '{name}' and tags.`{run_tag}` = '{run_id}'")
    if found:
        version = str(found[0].version)
    else:
        with _fluent_tracking_uri(tracking_uri):
            model_uri, model_id = _logged_model(client, run_id=run_id, model=model, input_shape=input_shape)
            _hold_if_asked()
            try:
                client.get_registered_model(name)
            except MlflowException as error:
                if str(error.error_code) != "RESOURCE_DOES_NOT_EXIST":
                    raise
                client.create_registered_model(
                    name,
                    description="dpsweep: one version per ε bound of each sweep (@eps-<bound>), or the model a "
                    "private-selection sweep releases (@selected)",
                )
            version = str(
                client.create_model_version(
                    name, source=model_uri, run_id=run_id, tags=dict(tags), model_id=model_id
                ).version
            )
    for key, value in tags.items():  # a version from before may lack a tag added since
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, alias, version)
    return version


def _logged_model(
    client: MlflowClient, *, run_id: str, model: nn.Module, input_shape: tuple[int, int, int]
) -> tuple[str, str]:
    """The model's URI and id as logged on the run: one an earlier attempt logged, else logged now."""
    run = client.get_run(run_id)
    earlier = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' and name = '{_LOGGED_NAME}'",
    )
    ready = [m for m in earlier if str(m.status).endswith("READY")]
    if ready:
        return ready[0].model_uri, ready[0].model_id
    example = np.zeros((2, *input_shape), dtype=np.float32)  # batch 2: the signature's batch axis stays free
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    logged = client.create_logged_model(run.info.experiment_id, name=_LOGGED_NAME, source_run_id=run_id)
    # MLflow warns about pickling on every save: said once in docs/results.md instead.
    pytorch_logger = logging.getLogger("mlflow.pytorch")
    level = pytorch_logger.level
    pytorch_logger.setLevel(logging.ERROR)
    try:
        info = mlflow.pytorch.log_model(
            model,
            name=_LOGGED_NAME,
            model_id=logged.model_id,
            run_id=run_id,
            signature=infer_signature(example, output),
            input_example=example,
            # Pickled, so that loading gives the nn.Module back (its class must be importable there);
            # MLflow 3's default, a torch.export graph, needs every model (a user's too) to export.
            serialization_format="pickle",
            # Named, not inferred: inferring loads the model in a subprocess, seconds per bound.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    finally:
        pytorch_logger.setLevel(level)
    return info.model_uri, info.model_id
