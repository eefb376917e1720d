"""dp_core: one DP-SGD trainer on Opacus, its privacy accountant, datasets and models.

It imports nothing from sweeps, Ray, Optuna or MLflow: a sweep orchestrates it, never the
other way round. Start with ``dp_core.train.train`` or ``python -m dp_core.train``.
"""

__all__ = ["accounting", "audit", "config", "data", "dpsgd", "federated", "models", "plan", "synthetic", "train"]
