"""dp_core: one DP-SGD trainer on Opacus, its privacy accountant, datasets and models.

It imports nothing from sweeps, Ray, Optuna or MLflow: a sweep orchestrates it, never the
other way round. Start with ``dp_core.train.train`` or ``python -m dp_core.train``.
"""

# The public modules (imported on use: ``import dp_core`` stays light). Modules named ``_x`` are private.
__all__ = [
    "accounting",  # ε of Poisson-subsampled Gaussian DP-SGD (PRV, RDP), the ACCOUNTANTS registry
    "audit",  # an empirical lower bound on ε from canaries
    "bench",  # python -m dp_core.bench: the engines against non-private training
    "cli",  # the flags of one training configuration
    "config",  # TrainConfig and its sections, validated where built
    "data",  # load a dataset whole into memory
    "dataset_facts",  # what is known of each dataset without loading it; the DATASETS registry
    "dataset_spec",  # an own dataset as a space or config names it (format, path, declared classes, ...)
    "dpsgd",  # make_private_step: the DP-SGD step on Opacus; Poisson batches
    "engines",  # per-sample gradient engines; the ENGINES registry
    "errors",  # ConfigError and the require_* checks
    "federated",  # FedAvg over DP-SGD clients
    "models",  # the model zoo; the MODELS registry
    "noise",  # the Gaussian noise of DP-SGD
    "precision",  # fp32 / bf16 / tf32 training steps whose DP bookkeeping stays float32
    "own_data",  # an own dataset read, checked and kept once per process
    "privacy_plan",  # a run's privacy, planned before it trains
    "registry",  # the Registry class every plug-in point shares
    "splits",  # DatasetSplits
    "synthetic",  # generated stand-ins for CIFAR-10 and MNIST
    "train",  # train(config): the loop every sweep trial runs
    "user_code",  # a config's own "module:function" (a model's builder), imported from its code folders
    "vectorized",  # train several configurations of one small model at once
]
