"""``DatasetSplits``: a dataset's splits in memory, as every loader returns them.

A module of its own because both loaders build it: ``dp_core.data`` (which re-exports it) and
``dp_core.synthetic``, which ``dp_core.data`` imports.
"""

from __future__ import annotations

import dataclasses

from torch.utils.data import TensorDataset

__all__ = ["DatasetSplits"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSplits:
    """A dataset's splits, each ``TensorDataset(inputs float32 N x C x H x W or N x D, labels int64)``.

    ``validation`` is held out of the published training split (``None`` without one): models are
    trained on ``train`` only, chosen on ``validation``, and reported on ``test``.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]  # (C, H, W) for images, (D,) for tabular data
    validation: TensorDataset | None = None
