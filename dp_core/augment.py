"""Augmentation multiplicity: K random views of every example, drawn on the trainer's device.

De et al. 2022 ("Unlocking high-accuracy differentially private image classification through
scale", §3.1): each example's gradient is the gradient of its loss averaged over K augmented
views, g_i = ∇ (1/K) Σ_k ℓ(x_i^(k)), and that one g_i is clipped to C. An example still
contributes one clipped gradient to the sum, so the sensitivity, the noise and the accountant
are those of training without augmentation: K costs compute, not ε.

This module draws the views (random crop after reflect padding, and a horizontal flip where the
dataset allows one), as tensors on the images' device, from a generator of the run.
``dp_core.engines.AveragedViewsStep`` averages each example's per-view gradients before clipping.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dp_core.dataset_facts import DATASETS
from dp_core.dataset_spec import DatasetSpec, dataset_name
from dp_core.errors import ConfigError, require

if TYPE_CHECKING:
    from dp_core.config import DataConfig

__all__ = ["Augmentation", "augmentation_for", "augmentation_views", "augmented_views", "default_padding"]


def default_padding(height: int, width: int) -> int:
    """One pixel of padding per 8 of the image's shorter side, at least 1: 4 for 32×32 (the usual
    CIFAR crop), 3 for 28×28, 1 for 8×8 digits."""
    return max(1, min(height, width) // 8)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Augmentation:
    """How each example's K views are drawn: ``views`` = K, reflect ``padding`` before a random crop
    back to the image's size, and a horizontal flip with probability 1/2 if ``horizontal_flip``."""

    views: int
    padding: int
    horizontal_flip: bool

    def __post_init__(self) -> None:
        ok = isinstance(self.views, int) and not isinstance(self.views, bool) and self.views >= 2
        require(ok, key="augmult", value=self.views, allowed="to be an integer >= 2 for an augmentation (1 is off)")
        ok = isinstance(self.padding, int) and not isinstance(self.padding, bool) and self.padding >= 0
        require(ok, key="augment_padding", value=self.padding, allowed="to be an integer >= 0")


def augmentation_for(
    dataset: str | DatasetSpec, *, augmult: int, padding: int | None, input_shape: tuple[int, ...]
) -> Augmentation | None:
    """The augmentation a run draws its views by, or None for ``augmult == 1`` (off).

    The flip is the dataset's to allow (``DatasetFacts.horizontal_flip``, an own dataset's
    ``horizontal_flip`` key): a mirrored digit is another symbol, a mirrored car is a car.

    Raises:
        ConfigError: ``augmult > 1`` on data that are not images (C, H, W), or a padding the
            images cannot be reflected by (it must be smaller than their sides).
    """
    if augmult == 1:
        return None
    name = dataset_name(dataset)
    if len(input_shape) != 3:
        raise ConfigError(
            f"Expected images (channels, height, width) with augmult > 1 (its views are crops and flips of "
            f"an image), but got augmult={augmult} on dataset {name!r} of input shape {tuple(input_shape)}; "
            "set augmult=1 for tabular data."
        )
    _, height, width = input_shape
    padding = default_padding(height, width) if padding is None else padding
    require(
        padding < min(height, width),
        key="augment_padding",
        value=padding,
        allowed=f"to be smaller than the images' sides ({height}x{width} on dataset {name!r}) for reflect padding",
    )
    flip = dataset.horizontal_flip if isinstance(dataset, DatasetSpec) else DATASETS.get(dataset).horizontal_flip
    return Augmentation(views=augmult, padding=padding, horizontal_flip=flip)


def augmented_views(images: torch.Tensor, augmentation: Augmentation, *, generator: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) images -> (B·K, C, H, W) views, example-major: rows i·K … i·K+K-1 are example i's.

    Each view is a random H×W crop of the image reflect-padded by ``padding`` pixels on every side
    (every offset in [0, 2·padding] equally likely), then mirrored left-right with probability 1/2
    where ``horizontal_flip``. The draws come from ``generator`` (on the images' device), so a
    seeded run draws the same views, and a resumed one continues the same stream.
    """
    views = images.repeat_interleave(augmentation.views, dim=0)
    count, channels, height, width = views.shape
    device = images.device
    padding = augmentation.padding
    if padding > 0 and count > 0:
        padded = F.pad(views, (padding, padding, padding, padding), mode="reflect")
        top = torch.randint(0, 2 * padding + 1, (count,), generator=generator, device=device)
        left = torch.randint(0, 2 * padding + 1, (count,), generator=generator, device=device)
        # Two gathers (rows, then columns) with expanded, uncopied indices: no (count, C, H, W) index tensors.
        rows = (top[:, None] + torch.arange(height, device=device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(width, device=device))[:, None, None, :]
        padded = padded.gather(2, rows.expand(count, channels, height, padded.shape[3]))
        views = padded.gather(3, cols.expand(count, channels, height, width))
    if augmentation.horizontal_flip and count > 0:
        flipped = torch.rand(count, generator=generator, device=device) < 0.5
        views = torch.where(flipped[:, None, None, None], views.flip(-1), views)
    return views


def augmentation_views(
    config: DataConfig, *, input_shape: tuple[int, ...], generator: torch.Generator
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A run's ``images -> views`` (``augmented_views`` drawing from ``generator``), or None for augmult 1.

    Raises ConfigError as :func:`augmentation_for` does.
    """
    augmentation = augmentation_for(
        config.dataset, augmult=config.augmult, padding=config.augment_padding, input_shape=input_shape
    )
    if augmentation is None:
        return None
    return functools.partial(augmented_views, augmentation=augmentation, generator=generator)
