"""A bound's model logged on its refit run and registered, against a real sqlite MLflow store."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    ENDPOINT_NOT_FOUND,
    FEATURE_DISABLED,
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
)
from mlflow.tracking import MlflowClient

from dp_core.models import build_model
from sweeps.protocol import TrainedModel
from sweeps.results.released_model import bound_alias, save_weights, weights_path
from sweeps.tracking import SweepTracker
from sweeps.tracking.model_registry import RUN_ID_TAG, has_no_registry
from tests._mlflow_store import empty_sqlite_store

TRAIN = {"dataset": "digits", "model": "mlp", "epochs": 2, "seed": 7}


def _refit_run(tmp_path: Path) -> tuple[SweepTracker, Path, torch.nn.Module]:
    """A sweep with one finished refit run and its model kept in the sweep folder, as the driver leaves them."""
    tracker = SweepTracker(tracking_uri=empty_sqlite_store(tmp_path / "mlflow.db"), experiment="dpsweep")
    tracker.start_sweep(sweep_id="s1", run_name="s1", params={"space": "t"}, tags={})
    tracker.log_trial(
        key="refit-key",
        name="refit_trial_0000_epoch2_eps3_seed1",
        params={"lr": 0.5},
        epochs=[(2, {"test_accuracy": 0.5, "epsilon": 2.9})],
        outcome="completed",
        tags={"dpsweep.role": "refit", "dpsweep.stage": "refit"},
    )
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10).eval()
    path = weights_path(tmp_path / "sweep", "refit_trial_0000_epoch2_eps3_seed1")
    save_weights(
        path,
        TrainedModel(state_dict=model.state_dict(), input_shape=(1, 8, 8), num_classes=10),
        train=TRAIN,
        run_key="refit-key",
    )
    return tracker, path, model


def test_alias_of_a_bound_is_eps_and_the_bound_with_its_dot_as_underscore() -> None:
    assert [bound_alias(b) for b in (3.0, 0.5, 8, 0.25, 10.0)] == ["eps-3", "eps-0_5", "eps-8", "eps-0_25", "eps-10"]
    with pytest.raises(ValueError, match="Expected a finite bound > 0"):
        bound_alias(float("inf"))


def test_a_model_registered_twice_is_one_version_on_its_refit_run_that_loads_and_predicts_as_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker, path, model = _refit_run(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tags = {"dpsweep.epsilon": "2.9", "dpsweep.delta": "1e-05", "dpsweep.accountant": "prv", "trained_on": "x"}
    tracker.register_model(weights=str(path), name="dpsweep-t", alias="eps-3", tags=tags)
    tracker.register_model(weights=str(path), name="dpsweep-t", alias="eps-3", tags=tags)  # a resume, a replay
    assert "MLFLOW_TRACKING_URI" not in os.environ  # MLflow's fluent URI was the tracker's only for the call

    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    run_id = tracker.run_id_of("refit-key")
    (version,) = client.search_model_versions("name = 'dpsweep-t'")
    assert version.run_id == run_id and version.tags == {**tags, RUN_ID_TAG: run_id}
    assert client.get_model_version_by_alias("dpsweep-t", "eps-3").version == version.version
    # Logged on the refit run itself, in the sweep's experiment, with a signature and an input example.
    (logged,) = client.search_logged_models(experiment_ids=[tracker.experiment_id])
    assert logged.source_run_id == run_id
    assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs] == [logged.model_id]
    mlflow.set_tracking_uri(tracker.tracking_uri)
    try:
        meta = mlflow.models.get_model_info("models:/dpsweep-t@eps-3")
        loaded = mlflow.pytorch.load_model("models:/dpsweep-t@eps-3")
    finally:
        mlflow.set_tracking_uri(None)
    assert meta.signature is not None and meta.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 8, 8)
    assert meta.saved_input_example_info is not None
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_a_server_without_a_registry_is_said_in_one_line_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tracker, path, _ = _refit_run(tmp_path)
    capsys.readouterr()
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "nowhere://registry")  # a store MLflow has no registry for
    tracker = pickle.loads(pickle.dumps(tracker))  # as in another process: its client reads the environment anew
    for alias in ("eps-1", "eps-3"):
        tracker.register_model(weights=str(path), name="dpsweep-t", alias=alias, tags={})
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "Registry" in line]
    assert len(lines) == 1 and "has no Model Registry" in lines[0] and str(path.parent) in lines[0], err
    assert "Traceback" not in err
    monkeypatch.delenv("MLFLOW_REGISTRY_URI")
    assert MlflowClient(tracking_uri=tracker.tracking_uri).search_registered_models() == []


def test_what_a_server_without_a_registry_answers_is_told_apart_from_other_failures() -> None:
    # What MLflow's REST client raises for a 404 without a JSON body (mlflow.utils.rest_utils.verify_rest_response).
    missing_endpoint = MlflowException(
        "API request to endpoint /api/2.0/mlflow/model-versions/search failed with error code 404 != 200",
        error_code=ENDPOINT_NOT_FOUND,
    )
    assert has_no_registry(missing_endpoint)
    assert has_no_registry(MlflowException("registry off", error_code=FEATURE_DISABLED))
    assert not has_no_registry(MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not has_no_registry(MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE))
    assert not has_no_registry(RuntimeError("anything else"))
