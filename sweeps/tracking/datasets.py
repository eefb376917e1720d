"""An own dataset's provenance as MLflow records it (``mlflow.log_input``): name, source, digest, schema.

No value of the data is logged: a :class:`~mlflow.data.meta_dataset.MetaDataset` carries only
where the data came from, the digest of its values and the shapes and types of its columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import CodeDatasetSource, LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag
from mlflow.types import Schema, TensorSpec

__all__ = ["dataset_input"]


def dataset_input(
    *, name: str, source: str, loader: str | None, digest: str, input_shape: Sequence[int], context: str = "training"
) -> DatasetInput:
    """The MLflow input of one dataset: its name, source (a file or folder, or a loader), digest and schema
    (float32 inputs of ``input_shape``, int64 class labels)."""
    schema = Schema(
        [
            TensorSpec(np.dtype("float32"), (-1, *input_shape), "inputs"),
            TensorSpec(np.dtype("int64"), (-1,), "label"),
        ]
    )
    origin = CodeDatasetSource({"loader": loader, "from": source}) if loader else LocalArtifactDatasetSource(source)
    dataset = MetaDataset(source=origin, name=name, digest=digest, schema=schema)
    return DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[InputTag(key="mlflow.data.context", value=context)])
