"""A kept model is built again as it was trained: the builder's own arguments travel with its weights."""

from __future__ import annotations

from pathlib import Path

import torch

from dp_core.models import build_model
from sweeps.protocol import TrainedModel
from sweeps.results.released_model import load_weights, save_weights


def test_a_kept_model_with_builder_arguments_is_built_again_with_them(tmp_path: Path) -> None:
    # Not the builder's defaults (width 64, depth 2): loading with those would not fit the weights.
    train = {"dataset": "digits", "model": "tabular_mlp", "model_kwargs": {"width": 16, "depth": 1}, "epochs": 1}
    torch.manual_seed(0)
    trained = build_model("tabular_mlp", input_shape=(64,), num_classes=10, model_kwargs={"width": 16, "depth": 1})
    state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    path = tmp_path / "kept.pt"
    save_weights(path, TrainedModel(state_dict=state, input_shape=(64,), num_classes=10), train=train, run_key="k")
    kept = load_weights(path)
    assert kept.run_key == "k"
    assert {k: v.shape for k, v in kept.model.state_dict().items()} == {k: v.shape for k, v in state.items()}
    inputs = torch.rand(5, 64)
    torch.testing.assert_close(kept.model(inputs), trained.eval()(inputs))
