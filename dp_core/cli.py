"""The flags of one training configuration, for ``python -m dp_core.train`` (and its audit and federated runs).

Flags are generated from the configuration dataclasses, so every setting has exactly one
spelling (``--max-grad-norm`` for ``max_grad_norm``); the seed script's names are accepted as
aliases (``--sigma``, ``-c``, ``--architecture``, ``--clip-per-layer``, ``--optim``). The
commands themselves (``main``) live in the modules they run, which import this one.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from dp_core import config as config_module
from dp_core.config import TOP_LEVEL_KEYS, ConfigError, TrainConfig

__all__ = [
    "add_flag",
    "add_train_flags",
    "build_parser",
    "config_from_args",
    "seed_given",
    "settings_from_args",
    "settings_parser",
]

_HELP = {
    "dataset": "dataset name (digits is bundled; mnist, fashion_mnist, cifar10 read torchvision's files)",
    "data_root": "folder with torchvision's dataset layout (default: $DPSWEEP_DATA or ~/.cache/dpsweep/data)",
    "download": "let torchvision download the dataset if missing",
    "augmult": "augmentation multiplicity K: each example's gradient is the mean over K random views, clipped once",
    "augment_padding": "reflect padding before augmult's random crop (default: one pixel per 8 of the image's side)",
    "model": "architecture from the model zoo, or your own builder as module:function",
    "gn_groups": "GroupNorm groups for resnet18_gn, resnet18_gn_cifar, wrn16_4 and wrn",
    "model_kwargs": "the model builder's keyword arguments, as YAML, e.g. '{width: 128}'",
    "fix_model": "let Opacus' ModuleValidator.fix replace what it cannot train in an own model (BatchNorm)",
    "optimizer": "sgd, adam or rmsprop",
    "lr": "learning rate",
    "lr_schedule": "constant or cos (cosine annealing over all steps)",
    "ema_decay": "evaluate and keep an exponential moving average of the weights with this decay (off if not given)",
    "max_grad_norm": "per-example clipping bound C",
    "noise_multiplier": "σ: noise std is σ·C (give this or --target-epsilon)",
    "target_epsilon": "calibrate σ so the whole run spends at most this ε",
    "delta": "δ of the (ε, δ) guarantee; must be < 1/N",
    "accountant": "prv (tight, default) or rdp",
    "clipping": "flat (one bound over all parameters) or per_layer",
    "epsilon_budget": "stop before the step that would exceed this ε",
    "disable_dp": "train without clipping or noise (the non-private reference)",
    "secure_mode": "secure noise (refused: needs torchcsprng, see message)",
    "grad_sample_mode": "per-sample gradient engine: hooks or functorch",
    "epochs": "number of epochs (1/q Poisson-sampled steps each)",
    "batch_size": "expected logical batch size B (sample rate q = B/N)",
    "sample_rate": "Poisson sampling rate q (instead of --batch-size)",
    "max_physical_batch_size": "split logical batches into chunks of at most this many (virtual batches)",
    "seed": (
        "seed for initialisation, sampling and noise; without it a secret one is drawn from the OS "
        "(a given seed makes a reproducible run whose ε holds only against whoever does not know it)"
    ),
    "device": "auto, cpu or cuda",
    "precision": "fp32, bf16, tf32 or auto (bf16 on a CUDA GPU with native bf16, else fp32); DP bookkeeping stays fp32",
    "test_batch_size": "batch size for evaluation",
    "channels_last": "convolutions in NHWC (torch.channels_last); engines bk and functorch only",
}
_ALIASES = {
    "noise_multiplier": ["--sigma"],
    "max_grad_norm": ["-c", "--max-per-sample-grad-norm"],
    "model": ["--architecture"],
    "optimizer": ["--optim"],
    "data_root": ["--data-root-dir"],
}


def _mapping(text: str) -> Any:
    """A flag's YAML mapping (``--model-kwargs '{width: 128}'``); anything else is ModelConfig's to refuse."""
    return yaml.safe_load(text)


def _flag_type(annotation: Any) -> Any:
    hints = {"int": int, "float": float, "str": str, "bool": bool, "dict[str, Any]": _mapping}
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    for name, kind in hints.items():
        if text.split("|")[0].strip() == name:
            return kind
    return str


def build_parser() -> argparse.ArgumentParser:
    parser = settings_parser(
        prog="python -m dp_core.train",
        metrics="the final metrics",
        description="Train one model with DP-SGD (Opacus) and print its accuracy and ε.",
    )
    parser.add_argument("--checkpoint", type=Path, help="save after every epoch; resume if it exists")
    parser.add_argument("--clip-per-layer", action="store_true", help="alias for --clipping per_layer")
    add_train_flags(parser)
    return parser


def settings_parser(*, prog: str, description: str, metrics: str) -> argparse.ArgumentParser:
    """A parser with ``--config`` (a YAML file of flat settings that flags override) and
    ``--metrics-json`` (where to write ``metrics`` as JSON too)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help="YAML file of flat settings; flags override it")
    parser.add_argument("--metrics-json", type=Path, help=f"also write {metrics} JSON here")
    return parser


def add_train_flags(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """One flag per key of ``TrainConfig`` (``--max-grad-norm`` for ``max_grad_norm``, with the seed
    script's aliases), defaulting to None so that only the flags given override a config file."""
    defaults = TrainConfig().to_dict()
    for section in (
        config_module.DataConfig,
        config_module.ModelConfig,
        config_module.OptimizerConfig,
        config_module.PrivacyConfig,
    ):
        for field in dataclasses.fields(section):
            add_flag(parser, field.name, field.type, defaults[field.name])
    for key in TOP_LEVEL_KEYS:
        if key not in exclude:
            field = next(f for f in dataclasses.fields(TrainConfig) if f.name == key)
            add_flag(parser, key, field.type, defaults[key])


def settings_from_args(args: argparse.Namespace, keys: Iterable[str]) -> tuple[dict[str, Any], str]:
    """The flat settings of ``--config``'s YAML file overridden by the flags given among ``keys``,
    and where they came from (for error messages).

    Raises:
        ConfigError: the file does not hold a mapping.
    """
    values: dict[str, Any] = {}
    where = "command line"
    if args.config is not None:
        loaded = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"Expected {args.config} to hold a mapping of settings, but got {type(loaded).__name__}.")
        values.update(loaded)
        where = f"{args.config} and the command line"
    for key in keys:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    return values, where


def add_flag(parser: argparse.ArgumentParser, key: str, annotation: Any, default: Any) -> None:
    names = [f"--{key.replace('_', '-')}", *_ALIASES.get(key, [])]
    kind = _flag_type(annotation)
    help_text = _HELP.get(key, key) if key == "seed" else f"{_HELP.get(key, key)} (default: {default})"
    if kind is bool:
        parser.add_argument(*names, dest=key, action="store_true", default=None, help=help_text)
    else:
        parser.add_argument(*names, dest=key, type=kind, default=None, help=help_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of ``--config``'s file and the flags; a secret seed unless one is given."""
    values, where = settings_from_args(args, config_module.known_keys())
    if args.clip_per_layer:
        values["clipping"] = "per_layer"
    # A flag for one of two alternatives replaces the other one's default.
    if "sample_rate" in values and "batch_size" not in values:
        values["batch_size"] = None
    if values.get("noise_multiplier") is not None and "target_epsilon" in values and args.config is None:
        values.pop("target_epsilon")
    if "seed" not in values:
        values["seed"] = _secret_seed(getattr(args, "checkpoint", None))
    return TrainConfig.from_dict(values, where=where)


def seed_given(args: argparse.Namespace) -> bool:
    """Whether the seed came from the flags or the config file, rather than being drawn."""
    if args.seed is not None:
        return True
    return args.config is not None and "seed" in (yaml.safe_load(args.config.read_text()) or {})


def _secret_seed(checkpoint: Path | None) -> int:
    """A seed no one can know: the noise of a run whose seed is in our code or its flags' defaults
    could be regenerated by anyone who reads them, and no ε would hold against them. Drawn from
    the OS's entropy, or, to resume, the one the checkpoint was written with."""
    if checkpoint is not None and checkpoint.exists():
        import torch

        return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["config"]["seed"])
    return secrets.randbits(62)
