"""What a private-selection sweep registers (sweeps.driver.register_models.register_selected_model):
the model its selected trial kept of the selected epoch, once, tagged with the release alone; a kept
model of another epoch is refused. Real sqlite MLflow, a real trained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from dp_core.config import TrainConfig
from dp_core.data import load_data
from dp_core.train import evaluate, train
from sweeps.driver.register_models import register_selected_model
from sweeps.planning import plan_trial
from sweeps.privacy.statement import SelectionPrivacy
from sweeps.results.frontier import Point
from sweeps.results.released_model import load_weights, selected_release, weights_path
from sweeps.tracking import SweepTracker
from tests._mlflow_store import empty_sqlite_store

TRAIN = {
    "dataset": "digits",
    "model": "mlp",
    "batch_size": 256,
    "epochs": 2,
    "noise_multiplier": 1.0,
    "lr": 0.5,
    "validation_fraction": 0.1,
    "seed": 123456789,
}
PRIVACY = SelectionPrivacy(
    sweep_epsilon=4.25,
    naive_composition_epsilon=9.75,
    largest_trial_epsilon=2.5,
    trials_run=7,
    configurations=2,
    distribution="poisson",
    mean=5.0,
    eta=None,
    delta=1e-5,
)


@pytest.fixture(scope="module")
def kept_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A trial's best-epoch model as its worker keeps it (dp_core.train's best_model_path)."""
    path = tmp_path_factory.mktemp("worker") / "best_model.pt"
    train(TrainConfig.from_dict(TRAIN), best_model_path=path, evaluate_test=False)
    return path, torch.load(path, weights_only=True)


def _sweep(tmp_path: Path) -> tuple[SweepTracker, object]:
    trial = plan_trial(TRAIN, name="trial_0001_draw00000000ab", axis_values={"noise_multiplier": 1.0})
    tracker = SweepTracker(tracking_uri=empty_sqlite_store(tmp_path / "mlflow.db"), experiment="dpsweep")
    tracker.start_sweep(sweep_id="s1", run_name="s1", params={"space": "t"}, tags={})
    tracker.log_trial(key=trial.key, name=trial.name, params={"lr": 0.5}, outcome="completed")
    return tracker, trial


def _best(trial: object, kept: dict, *, epoch: int | None = None) -> Point:
    return Point(
        epsilon=1.5,
        accuracy=kept["val_accuracy"],
        run_id="",
        trial=trial.name,
        epoch=kept["epoch"] if epoch is None else epoch,
        params={"axis.noise_multiplier": "1.0", "lr": "0.5"},
    )


def test_the_selected_trials_kept_model_is_registered_once_with_the_release_as_tags(
    tmp_path: Path, kept_model: tuple[Path, dict]
) -> None:
    source, kept = kept_model
    tracker, trial = _sweep(tmp_path)
    best = _best(trial, kept)
    fetches = []

    def fetch(to: Path) -> bool:
        fetches.append(to)
        to.write_bytes(source.read_bytes())
        return True

    for _ in range(2):  # a resumed sweep registers again: the same version, not fetched again
        alias = register_selected_model(
            best, PRIVACY, trial=trial, fetch=fetch, tracker=tracker, sweep_dir=tmp_path / "sweep", space_name="t"
        )
        assert alias == "selected"
    assert len(fetches) == 1 and not fetches[0].exists()
    saved = load_weights(weights_path(tmp_path / "sweep", trial.name))
    assert saved.run_key == trial.key
    for name, tensor in kept["state_dict"].items():
        assert torch.equal(saved.model.state_dict()[name], tensor)

    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    (version,) = client.search_model_versions("name = 'dpsweep-t'")
    assert version.run_id == tracker.run_id_of(trial.key)
    assert client.get_model_version_by_alias("dpsweep-t", "selected").version == version.version
    release = selected_release(best, PRIVACY)
    tags = version.tags
    assert tags.pop("dpsweep.trial_run_id") == version.run_id
    assert tags == {
        "dpsweep.sweep_epsilon": "4.25",
        "dpsweep.delta": "1e-05",
        "dpsweep.accountant": "rdp",
        "dpsweep.guarantee": "best of K ~ poisson (mean 5) random trials, Papernot & Steinke 2022",
        "dpsweep.val_accuracy": f"{kept['val_accuracy']:.6g}",
        "dpsweep.epoch": str(kept["epoch"]),
        "dpsweep.hyperparameters": json.dumps(release["hyperparameters"]),
        "trained_on": "train",
        "dpsweep.privacy_statement": tags["dpsweep.privacy_statement"],
    }
    statement = tags["dpsweep.privacy_statement"]
    assert "sweep ε = 4.250 (δ = 1e-05, RDP accountant)" in statement
    # Beside the release's fields (above) only the statement, made of them: not K (trials_run), not the
    # naive composition (it grows with K), not the seed, not the trial's name.
    told = " ".join(tags.values())
    assert "9.75" not in told and "naive" not in told and "trials" not in statement.replace("random trials", "")
    assert str(TRAIN["seed"]) not in told and trial.name not in told

    config = TrainConfig.from_dict(TRAIN)
    _, accuracy = evaluate(saved.model, *load_data(config.data).validation.tensors, batch_size=config.test_batch_size)
    assert accuracy == kept["val_accuracy"]


def test_a_kept_model_of_another_epoch_is_not_registered(
    tmp_path: Path, kept_model: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    source, kept = kept_model
    tracker, trial = _sweep(tmp_path)
    best = _best(trial, kept, epoch=kept["epoch"] + 1)

    def fetch(to: Path) -> bool:
        to.write_bytes(source.read_bytes())
        return True

    assert (
        register_selected_model(
            best, PRIVACY, trial=trial, fetch=fetch, tracker=tracker, sweep_dir=tmp_path / "sweep", space_name="t"
        )
        is None
    )
    assert f"Expected the kept model of {trial.name} at epoch {kept['epoch'] + 1}" in capsys.readouterr().err
    assert not weights_path(tmp_path / "sweep", trial.name).exists()
    assert MlflowClient(tracking_uri=tracker.tracking_uri).search_registered_models() == []
