"""Own datasets (dp_core.dataset_spec, dp_core.own_data): read as given, checked, transformed only as declared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_core.config import TrainConfig
from dp_core.data import load_dataset
from dp_core.dataset_facts import canonical_train_size
from dp_core.dataset_spec import DatasetSpec
from dp_core.errors import ConfigError
from dp_core.own_data import own_dataset, read_dataset
from dp_core.train import train
from dp_core.vectorized import can_vectorize
from tests._own_data import digits_arrays, write_csv, write_image_folder, write_loader, write_npz


def _spec(folder: Path, **values: object) -> DatasetSpec:
    return DatasetSpec.from_mapping(values, base=folder)


def test_npz_is_read_as_given_with_declared_classes(tmp_path: Path) -> None:
    write_npz(tmp_path / "d.npz")
    data = read_dataset(_spec(tmp_path, format="npz", path="d.npz", classes=10))
    arrays = digits_arrays()
    assert data.splits.input_shape == (64,) and data.splits.num_classes == 10 and data.caveats == ()
    assert torch.equal(data.splits.train.tensors[0], torch.from_numpy(arrays["x_train"]))
    assert torch.equal(data.splits.test.tensors[1], torch.from_numpy(arrays["y_test"]))
    assert data.spec.path == str(tmp_path / "d.npz")


def test_classes_read_from_the_data_come_with_the_caveat(tmp_path: Path) -> None:
    write_npz(tmp_path / "d.npz")
    data = read_dataset(_spec(tmp_path, format="npz", path="d.npz"))
    assert data.splits.num_classes == 10
    assert len(data.caveats) == 1 and "statistic of the data" in data.caveats[0]


def test_an_npz_validation_split_is_its_own(tmp_path: Path) -> None:
    arrays = digits_arrays(train=200, test=100)
    write_npz(tmp_path / "d.npz", x_val=arrays["x_test"][:40], y_val=arrays["y_test"][:40], **arrays)
    spec = _spec(tmp_path, format="npz", path="d.npz", classes=10)
    with_val = load_dataset(spec, validation_fraction=0.1)
    assert len(with_val.train) == 200 and len(with_val.validation) == 40
    assert load_dataset(spec).validation is None
    assert canonical_train_size(spec, validation_fraction=0.1) == 200


def test_csv_test_fraction_is_a_fixed_stratified_split_of_stated_seed(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", rows=400)
    spec = _spec(tmp_path, format="csv", path="t.csv", label="digit", test_fraction=0.25, classes=10)
    first, again = read_dataset(spec), read_dataset(spec)
    assert (len(first.splits.train), len(first.splits.test)) == (300, 100)
    assert first.digest == again.digest and torch.equal(first.splits.test.tensors[0], again.splits.test.tensors[0])
    other = read_dataset(_spec(tmp_path, format="csv", path="t.csv", label="digit", test_fraction=0.25, classes=10,
                               split_seed=1))  # fmt: skip
    assert other.digest != first.digest
    counts = torch.bincount(first.splits.test.tensors[1], minlength=10)
    assert counts.min() >= 9  # stratified: every digit about 10 times in 100


def test_csv_label_strings_map_to_the_declared_classes_in_order(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b,kind\n0.1,0.2,cat\n0.3,0.4,dog\n0.5,0.6,cat\n")
    (tmp_path / "u.csv").write_text("a,b,kind\n0.7,0.8,dog\n")
    data = read_dataset(
        _spec(tmp_path, format="csv", path="t.csv", test_path="u.csv", label="kind", classes=["dog", "cat"])
    )
    assert data.splits.train.tensors[1].tolist() == [1, 0, 1] and data.splits.test.tensors[1].tolist() == [0]
    assert data.splits.input_shape == (2,)


def test_declared_normalisation_and_bounds_are_applied_exactly(tmp_path: Path) -> None:
    x = np.array([[0.0, 10.0], [4.0, -5.0], [2.0, 30.0]], dtype=np.float32)
    y = np.array([0, 1, 0])
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    normalised = read_dataset(
        _spec(tmp_path, format="npz", path="d.npz", classes=2, normalisation={"mean": [2.0, 10.0], "std": [2.0, 5.0]})
    )
    expected = (x - np.array([2.0, 10.0])) / np.array([2.0, 5.0])
    assert np.allclose(normalised.splits.train.tensors[0].numpy(), expected)
    bounded = read_dataset(_spec(tmp_path, format="npz", path="d.npz", classes=2, bounds={"low": 0, "high": [4, 20]}))
    assert bounded.splits.train.tensors[0].tolist() == [[0.0, 0.5], [1.0, 0.0], [0.5, 1.0]]


def test_an_image_folder_is_read_resized_with_its_folders_as_classes(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", per_class=4, classes=3)
    data = read_dataset(_spec(tmp_path, format="image_folder", path="images", image_size=12))
    assert data.splits.input_shape == (3, 12, 12) and data.splits.num_classes == 3
    assert len(data.splits.train) == 12 and len(data.splits.test) == 6
    assert float(data.splits.train.tensors[0].max()) <= 1.0 and data.caveats  # the folders are the label set
    declared = read_dataset(
        _spec(tmp_path, format="image_folder", path="images", image_size=12, classes=["class_2", "class_1", "class_0"])
    )
    assert declared.caveats == ()
    images, labels = declared.splits.train.tensors
    found_images, found_labels = data.splits.train.tensors
    # class_0 is the third declared class: its images carry label 2.
    assert torch.equal(images[labels == 2], found_images[found_labels == 0])


def test_a_python_loader_is_imported_from_beside_the_space(tmp_path: Path) -> None:
    loader = write_loader(tmp_path, module="own_data_loader_ok")
    spec = _spec(tmp_path, format="python", loader=loader, classes=10)
    assert spec.loader_dir == str(tmp_path)
    data = read_dataset(spec)
    assert len(data.splits.train) == 300 and data.splits.input_shape == (64,)


def test_the_digest_changes_with_any_value(tmp_path: Path) -> None:
    arrays = digits_arrays()
    write_npz(tmp_path / "d.npz", **arrays)
    spec = _spec(tmp_path, format="npz", path="d.npz", classes=10)
    before = read_dataset(spec).digest
    arrays["x_test"][5, 3] += 1e-3
    write_npz(tmp_path / "d.npz", **arrays)
    assert read_dataset(spec).digest != before


def test_a_config_round_trips_through_json_with_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_npz(tmp_path / "d.npz")
    monkeypatch.chdir(tmp_path)
    config = TrainConfig.from_dict(
        {"dataset": {"format": "npz", "path": "d.npz", "classes": 10}, "model": "tabular_mlp"}
    )
    flat = json.loads(json.dumps(config.to_dict()))
    assert flat["dataset"] == {"format": "npz", "path": str(tmp_path / "d.npz"), "classes": 10}
    assert TrainConfig.from_dict(flat) == config


def test_own_tabular_data_trains_and_packs(tmp_path: Path) -> None:
    write_npz(tmp_path / "d.npz")
    base = {"dataset": {"format": "npz", "path": str(tmp_path / "d.npz"), "classes": 10}, "model": "tabular_mlp",
            "epochs": 1, "batch_size": 64, "lr": 1.0, "noise_multiplier": 1.0, "delta": 1e-3}  # fmt: skip
    configs = [TrainConfig.from_dict(base), TrainConfig.from_dict({**base, "lr": 0.5})]
    assert can_vectorize(configs) is None
    result = train(configs[0])
    assert result.reports[-1].epoch == 1 and 0.0 <= result.reports[-1].test_accuracy <= 1.0
    configs[0].check_against(own_dataset(configs[0].data.dataset).train_size)
    with pytest.raises(ConfigError, match=r"delta .*< 1/N = 0.00333 \(N=300 training examples of d.npz\)"):
        TrainConfig.from_dict({**base, "delta": 0.01}).check_against(300)


# ---- bad input: one clear ConfigError each -----------------------------------------------------------------


def _bad_npz(folder: Path, **overrides: np.ndarray) -> DatasetSpec:
    name = f"bad{len(list(folder.glob('bad*.npz')))}.npz"  # one file per case: the specs are read later
    write_npz(folder / name, **overrides)
    return _spec(folder, format="npz", path=name, classes=10)


def test_bad_files_are_refused_naming_the_fault(tmp_path: Path) -> None:
    x = digits_arrays()["x_train"]
    cases = {
        "no such file": _spec(tmp_path, format="npz", path="missing.npz"),
        "rank 3": _bad_npz(tmp_path, x_train=x.reshape(300, 8, 8)),
        "300 examples and 299 labels": _bad_npz(tmp_path, y_train=np.zeros(299, dtype=np.int64)),
    }
    for expected, spec in cases.items():
        with pytest.raises(ConfigError, match=expected):
            read_dataset(spec)
    with pytest.raises(ConfigError, match="both x_val and y_val"):
        read_dataset(_bad_npz(tmp_path, x_val=x[:10]))
    nan = x.copy()
    nan[7, 2] = np.nan
    with pytest.raises(ConfigError, match="1 values are NaN or infinite .the first in example 7"):
        read_dataset(_bad_npz(tmp_path, x_train=nan))
    inf = x.copy()
    inf[0, 0] = np.inf
    with pytest.raises(ConfigError, match="NaN or infinite"):
        read_dataset(_bad_npz(tmp_path, x_train=inf))


def test_labels_that_are_not_classes_are_refused(tmp_path: Path) -> None:
    y = digits_arrays()["y_train"]
    with pytest.raises(ConfigError, match=r"in \[0, 9\] \(dataset.classes=10\), but got 12"):
        read_dataset(_bad_npz(tmp_path, y_train=np.where(y == 3, 12, y)))
    with pytest.raises(ConfigError, match="but got -1"):
        read_dataset(_bad_npz(tmp_path, y_train=np.where(y == 3, -1, y)))
    with pytest.raises(ConfigError, match="a float target .regression. is not supported"):
        read_dataset(_bad_npz(tmp_path, y_train=y + 0.5))


def test_a_csv_without_the_label_column_or_with_a_float_target_is_refused(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv")
    with pytest.raises(ConfigError, match="label column dataset.label='target' .* its columns are p0, p1"):
        read_dataset(_spec(tmp_path, format="csv", path="t.csv", label="target", test_fraction=0.2))
    (tmp_path / "f.csv").write_text("a,price\n" + "".join(f"{i},{i * 1.37}\n" for i in range(20)))
    with pytest.raises(ConfigError, match="The trainer is a classifier"):
        read_dataset(_spec(tmp_path, format="csv", path="f.csv", label="price", test_fraction=0.2))


def test_a_loader_that_fails_to_import_or_lacks_its_function_is_refused(tmp_path: Path) -> None:
    broken = write_loader(tmp_path, module="own_data_loader_broken", body="import not_a_module_anywhere\n")
    with pytest.raises(ConfigError, match="importing 'own_data_loader_broken' failed: ModuleNotFoundError"):
        read_dataset(_spec(tmp_path, format="python", loader=broken))
    write_loader(tmp_path, module="own_data_loader_other")
    with pytest.raises(ConfigError, match="it has no 'nothing_here'"):
        read_dataset(_spec(tmp_path, format="python", loader="own_data_loader_other:nothing_here"))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"format": "hdf5", "path": "x"}, "dataset.format to be one of"),
        ({"format": "npz", "path": "x", "lable": "y"}, "Did you mean 'label'"),
        ({"format": "csv", "path": "x", "label": "y"}, "test_path .*or dataset.test_fraction"),
        ({"format": "python", "loader": "no colon"}, 'dataset.loader to be "module:function"'),
        ({"format": "image_folder", "path": "x"}, "dataset.image_size to be an integer"),
        ({"format": "npz", "path": "x", "normalisation": {"mean": 0.5, "std": 0}}, "every std > 0"),
        ({"format": "npz", "path": "x", "bounds": {"low": 1, "high": 1}}, "every low < high"),
        ({"format": "npz", "path": "x", "classes": 1}, "class count >= 2"),
    ],
)
def test_a_bad_spec_is_refused_before_anything_is_read(values: dict, expected: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=expected):
        _spec(tmp_path, **values)
