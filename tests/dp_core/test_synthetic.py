"""The synthetic stand-ins: real shapes, fixed by a seed, balanced, and learnable but not trivially."""

from __future__ import annotations

import pytest
import torch

from dp_core.config import TrainConfig
from dp_core.data import DATASETS, canonical_train_size, load_dataset
from dp_core.synthetic import SYNTHETIC_DATASETS, load_synthetic, synthetic_tensors
from dp_core.train import train


@pytest.mark.parametrize(("name", "shape"), [("synthetic_cifar10", (3, 32, 32)), ("synthetic_mnist", (1, 28, 28))])
def test_shapes_sizes_and_dtypes(name: str, shape: tuple[int, int, int]) -> None:
    data = load_dataset(name)
    images, labels = data.train.tensors
    assert data.input_shape == shape and data.num_classes == 10
    assert images.shape == (canonical_train_size(name), *shape) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (len(images),)
    assert data.test.tensors[0].shape == (SYNTHETIC_DATASETS[name].test_size, *shape)
    # Normalised inputs, as the real datasets are after their per-channel statistics.
    assert abs(images.mean().item()) < 0.2 and 0.8 < images.std().item() < 1.2
    # Balanced classes.
    assert torch.bincount(labels, minlength=10).tolist() == [len(labels) // 10] * 10


def test_full_variants_have_the_real_sizes() -> None:
    assert canonical_train_size("synthetic_cifar10_full") == canonical_train_size("cifar10") == 50_000
    assert canonical_train_size("synthetic_mnist_full") == canonical_train_size("mnist") == 60_000
    assert SYNTHETIC_DATASETS["synthetic_cifar10_full"].test_size == 10_000


def test_registered_beside_and_never_under_the_real_names() -> None:
    assert {"cifar10", "mnist", *SYNTHETIC_DATASETS} <= set(DATASETS)
    assert all(name.startswith("synthetic_") for name in SYNTHETIC_DATASETS)


def test_fixed_by_the_seed_without_touching_global_random_state() -> None:
    state = torch.random.get_rng_state()
    first = synthetic_tensors("synthetic_mnist", split="train")
    again = synthetic_tensors("synthetic_mnist", split="train")
    other_seed = synthetic_tensors("synthetic_mnist", split="train", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other_seed[0])
    # The test split is drawn apart from the training split.
    test_images = synthetic_tensors("synthetic_mnist", split="test")[0]
    assert not any(torch.equal(test_images[0], x) for x in first[0])


def test_classes_carry_signal_that_a_single_example_does_not_give_away() -> None:
    images, labels = load_synthetic("synthetic_cifar10").train.tensors
    flat = images.flatten(1)
    means = torch.stack([flat[labels == c].mean(0) for c in range(10)])
    # Nearest class mean (computed on train) on the test split: far above chance, far from perfect
    # on single pixels' worth of evidence.
    test_images, test_labels = load_synthetic("synthetic_cifar10").test.tensors
    nearest = torch.cdist(test_images.flatten(1), means).argmin(1)
    assert (nearest == test_labels).float().mean().item() > 0.5
    one_pixel = flat[:, 0]
    by_class = torch.stack([one_pixel[labels == c].mean() for c in range(10)])
    assert (by_class.max() - by_class.min()).item() < 2 * one_pixel.std().item()


def test_dp_training_learns_it() -> None:
    config = TrainConfig.from_dict(
        {
            "dataset": "synthetic_mnist",
            "model": "mlp",
            "epochs": 4,
            "batch_size": 100,
            "lr": 1.0,
            "noise_multiplier": 0.5,
            "max_grad_norm": 1.0,
            "delta": 1e-5,
            "accountant": "rdp",
            "seed": 0,
            "device": "cpu",
        }
    )
    result = train(config)
    assert result.final.test_accuracy > 0.4  # chance: 0.1
