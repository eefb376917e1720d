"""Synthetic stand-ins for CIFAR-10 and MNIST: generated, fixed by a seed, the real shapes.

They let the CIFAR-10 and MNIST sweeps run where the real files are not (CI, a machine without
internet) with the same models, input shapes and class count, and with class structure, so that
accuracy means something. Each of the 10 classes has a template, a smooth random image (a 4x4
field per channel upsampled to full size, bicubic) plus a per-channel offset; an example is its
class's template, a smooth nuisance image of its own (6x6 upsampled) and white pixel noise::

    x = (signal · template[y] + nuisance · smooth_field + noise · white_noise) / scale

with the scale that gives the pixels unit variance (the inputs arrive normalised, as the real
datasets do after their fixed per-channel statistics). The nuisance field lives in the same low
frequencies as the templates, so a class is not read off one pixel, and the signal is weaker for
the three-channel stand-in (more pixels carry it). Measured on the small stand-ins (1,000 train,
500 test, non-private SGD): logistic regression reaches about 0.88 test accuracy on both; the
CIFAR CNN about 0.5 after 8 epochs on ``synthetic_cifar10`` (0.15 after the first), the MNIST
CNN about 0.65 on ``synthetic_mnist``.

Every draw comes from ``torch.Generator`` objects seeded from (seed, stream) through numpy's
``SeedSequence``: no global random state is read or changed, and the same name and seed give the
same tensors on every machine (CPU generation; the splits are moved to a device by the trainer).
The templates are shared by the train and test splits, whose examples come from separate streams.

Sizes are fixed per name, because the privacy accountant needs the training-set size before any
data is loaded (``dp_core.dataset_facts``): ``synthetic_cifar10`` and
``synthetic_mnist`` are small (1,000 train, 500 test: quick CPU tests), the ``_full`` variants
have the real datasets' sizes (50,000 / 10,000 and 60,000 / 10,000), so that sampling rates and
planned ε equal those of the real dataset. They are never available under the real names.
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from dp_core.dataset_facts import DATASETS
from dp_core.splits import DatasetSplits

__all__ = ["SYNTHETIC_DATASETS", "SyntheticSpec", "load_synthetic", "synthetic_tensors"]

NUM_CLASSES = 10
DEFAULT_SEED = 0

# Relative amplitudes of the parts of an example (before the scale to unit variance; the class
# signal is the spec's), and of the per-channel offset of a template. Chosen by measurement (see
# the module docstring).
_NUISANCE, _NOISE = 2.0, 2.0
_CHANNEL_OFFSET = 0.75
_TEMPLATE_RESOLUTION, _NUISANCE_RESOLUTION = 4, 6
_CHUNK = 5_000  # examples generated at once: bounds the peak memory of the _full variants


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticSpec:
    """The shape (C, H, W), split sizes and class-signal amplitude of one synthetic dataset."""

    input_shape: tuple[int, int, int]
    train_size: int
    test_size: int
    signal: float


# The class-signal amplitude of each stand-in; its shape and sizes are facts (dp_core.dataset_facts).
_SIGNALS = {
    "synthetic_cifar10": 0.6,
    "synthetic_mnist": 1.0,
    "synthetic_cifar10_full": 0.6,
    "synthetic_mnist_full": 1.0,
}
SYNTHETIC_DATASETS = types.MappingProxyType(
    {
        name: SyntheticSpec(
            input_shape=DATASETS.get(name).input_shape,
            train_size=DATASETS.get(name).train_size,
            test_size=DATASETS.get(name).test_size,
            signal=signal,
        )
        for name, signal in _SIGNALS.items()
    }
)

_STREAMS = {"templates": 0, "train": 1, "test": 2}


def _generator(seed: int, stream: str) -> torch.Generator:
    state = np.random.SeedSequence([seed, _STREAMS[stream]]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 32) | int(state[1]))


def _smooth_fields(
    generator: torch.Generator, count: int, shape: tuple[int, int, int], resolution: int
) -> torch.Tensor:
    """``count`` random images of ``shape``, each a ``resolution``² Gaussian field per channel upsampled
    (bicubic) and scaled to unit standard deviation."""
    channels, height, width = shape
    coarse = torch.randn(count, channels, resolution, resolution, generator=generator)
    fields = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return fields / fields.flatten(1).std(dim=1).view(-1, 1, 1, 1)


def synthetic_tensors(name: str, *, split: str, seed: int = DEFAULT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (float32 N x C x H x W, unit variance) and labels (int64, balanced) of one split."""
    if name not in SYNTHETIC_DATASETS:
        raise ValueError(f"Expected name to be one of {', '.join(sorted(SYNTHETIC_DATASETS))}, but got name={name!r}.")
    if split not in ("train", "test"):
        raise ValueError(f"Expected split to be 'train' or 'test', but got split={split!r}.")
    spec = SYNTHETIC_DATASETS[name]
    size = spec.train_size if split == "train" else spec.test_size
    template_rng = _generator(seed, "templates")
    templates = _smooth_fields(template_rng, NUM_CLASSES, spec.input_shape, _TEMPLATE_RESOLUTION)
    templates = templates + _CHANNEL_OFFSET * torch.randn(
        NUM_CLASSES, spec.input_shape[0], 1, 1, generator=template_rng
    )
    rng = _generator(seed, split)
    labels = torch.randperm(size, generator=rng) % NUM_CLASSES  # balanced: size/10 per class, shuffled
    # The variance of the sum, for unit-variance inputs (templates vary a little more, by their offset).
    scale = (spec.signal**2 + _NUISANCE**2 + _NOISE**2) ** 0.5
    chunks = []
    for start in range(0, size, _CHUNK):
        y = labels[start : start + _CHUNK]
        nuisance = _smooth_fields(rng, len(y), spec.input_shape, _NUISANCE_RESOLUTION)
        noise = torch.randn(len(y), *spec.input_shape, generator=rng)
        chunks.append((spec.signal * templates[y] + _NUISANCE * nuisance + _NOISE * noise) / scale)
    return torch.cat(chunks).contiguous(), labels.to(torch.int64)


def load_synthetic(name: str, *, seed: int = DEFAULT_SEED) -> DatasetSplits:
    """The train and test splits of synthetic dataset ``name`` (see the module docstring)."""
    train = TensorDataset(*synthetic_tensors(name, split="train", seed=seed))
    test = TensorDataset(*synthetic_tensors(name, split="test", seed=seed))
    return DatasetSplits(
        name=name, train=train, test=test, num_classes=NUM_CLASSES, input_shape=SYNTHETIC_DATASETS[name].input_shape
    )
