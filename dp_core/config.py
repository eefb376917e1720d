"""Training configuration: frozen, keyword-only dataclasses validated where they are built.

A configuration is written by users as one flat mapping (a YAML file, CLI flags, a sweep trial):
``{"dataset": "digits", "lr": 0.5, "target_epsilon": 3.0, ...}``. ``TrainConfig.from_dict`` routes
each key to its section, refuses unknown keys with a suggestion, and every section checks its own
values in ``__post_init__``. Checks that need the training-set size N (δ < 1/N, batch ≤ N) run in
``TrainConfig.check_against(train_size)``, once the dataset is known.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from typing import Any

from dp_core.dataset_facts import DATASETS
from dp_core.dataset_spec import DatasetSpec, dataset_name
from dp_core.errors import (
    ConfigError,
    require,
    require_choice,
    require_in_range,
    require_positive,
)
from dp_core.user_code import check_reference, is_reference

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PrivacyConfig",
    "TrainConfig",
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "TOP_LEVEL_KEYS",
    "CLIPPING_MODES",
    "DEVICES",
    "known_keys",
    "model_kwarg_name",
    "unknown_key_error",
]

OPTIMIZERS = ("sgd", "adam", "rmsprop")
LR_SCHEDULES = ("constant", "cos")
CLIPPING_MODES = ("flat", "per_layer")
DEVICES = ("auto", "cpu", "cuda")


def _require_int(value: Any, *, key: str, low: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    require(ok, key=key, value=value, allowed=f"to be an integer >= {low}")


def _require_bool(value: Any, *, key: str) -> None:
    require(isinstance(value, bool), key=key, value=value, allowed="to be true or false")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which dataset to train on and where its files live (torchvision layout).

    ``dataset`` is a zoo name, or an own dataset: a mapping (``{format: npz, path: ...}``, see
    :class:`~dp_core.dataset_spec.DatasetSpec`), turned into its spec here.
    """

    dataset: str | DatasetSpec = "digits"
    data_root: str | None = None
    download: bool = False
    # The share of the training split held out, stratified and fixed, as a validation split: never
    # trained on, so the sampling rate and the accountant count only the rest. 0: none (the plain
    # trainer's default; sweeps select on validation and set their own).
    validation_fraction: float = 0.0
    # Augmentation multiplicity (dp_core.augment): each example's gradient is the mean over this many
    # random views of it, clipped once; 1 is off. It costs compute, not ε (one clipped gradient per example).
    augmult: int = 1
    # Reflect padding before the views' random crop; None: one pixel per 8 of the image's side (4 at 32x32).
    augment_padding: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.dataset, Mapping):
            object.__setattr__(self, "dataset", DatasetSpec.from_mapping(self.dataset))
        if not isinstance(self.dataset, DatasetSpec):
            DATASETS.check(self.dataset)  # dp_core.dataset_facts: built-ins and any registered at run time
        require_in_range(self.validation_fraction, key="validation_fraction", low=0.0, high=0.5, high_open=True)
        require(
            self.data_root is None or isinstance(self.data_root, str),
            key="data_root",
            value=self.data_root,
            allowed="to be a folder path",
        )
        _require_bool(self.download, key="download")
        _require_int(self.augmult, key="augmult", low=1)
        if self.augment_padding is not None:
            _require_int(self.augment_padding, key="augment_padding", low=0)
        tabular = (
            self.dataset.format in ("csv", "parquet")
            if isinstance(self.dataset, DatasetSpec)
            else len(DATASETS.get(self.dataset).input_shape) != 3
        )
        require(
            self.augmult == 1 or not tabular,
            key="augmult",
            value=self.augmult,
            allowed=f"to be 1 on tabular data (its views are crops and flips of images; dataset "
            f"{dataset_name(self.dataset)!r} is not images)",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which architecture to build: a zoo name, or the user's own ``"module:function"`` (dp_core.user_code)."""

    model: str = "mlp"
    gn_groups: int = 8
    # The builder's own keyword arguments (a tabular MLP's width, an own model's depth), passed as
    # builder(input_shape=, num_classes=, **model_kwargs).
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Opt-in for an own model that Opacus cannot train as built (BatchNorm): let Opacus'
    # ModuleValidator.fix replace those modules rather than refuse the model.
    fix_model: bool = False

    def __post_init__(self) -> None:
        from dp_core.models import MODELS, check_builder  # imported here: models imports torch

        if is_reference(self.model):
            check_reference(self.model, key="model")  # imported where the code folders are known (TrainConfig)
        else:
            try:
                MODELS.check(self.model)
            except ConfigError as error:
                raise ConfigError(f"{error} Or name a builder of your own as 'module:function'.") from None
        _require_int(self.gn_groups, key="gn_groups", low=1)
        kwargs = self.model_kwargs
        require(
            isinstance(kwargs, Mapping) and all(isinstance(k, str) and k.isidentifier() for k in kwargs),
            key="model_kwargs",
            value=kwargs,
            allowed="to be a mapping of the builder's keyword arguments, such as {width: 128, depth: 2}",
        )
        object.__setattr__(self, "model_kwargs", dict(kwargs))
        _require_bool(self.fix_model, key="fix_model")
        if not is_reference(self.model):
            check_builder(self.model, model_kwargs=self.model_kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """The optimizer DP-SGD wraps, its learning-rate schedule, and the average of its iterates."""

    optimizer: str = "sgd"
    lr: float = 2.0
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    # An exponential moving average of the weights (dp_core.averaging), evaluated and released
    # instead of the last iterate; None: off. Post-processing of the noisy iterates: no privacy cost.
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        require_choice(self.optimizer, key="optimizer", choices=OPTIMIZERS)
        require_positive(self.lr, key="lr")
        require_in_range(self.momentum, key="momentum", low=0.0, high=1.0, high_open=True)
        require_in_range(self.weight_decay, key="weight_decay", low=0.0, high=1.0)
        require_choice(self.lr_schedule, key="lr_schedule", choices=LR_SCHEDULES)
        if self.ema_decay is not None:
            require_in_range(self.ema_decay, key="ema_decay", low=0.0, high=1.0, low_open=True, high_open=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """The DP-SGD mechanism: clipping bound C, noise σ (or a target ε to calibrate σ to), δ.

    Exactly one of ``noise_multiplier`` and ``target_epsilon`` is set unless ``disable_dp``.
    ``noise_multiplier=0`` clips but adds no noise (ε = ∞); ``disable_dp`` trains without
    clipping or noise, the non-private reference.
    """

    max_grad_norm: float = 0.5
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    accountant: str = "prv"
    clipping: str = "flat"
    epsilon_budget: float | None = None
    disable_dp: bool = False
    secure_mode: bool = False
    grad_sample_mode: str = "auto"

    def __post_init__(self) -> None:
        # Imported here: engines imports torch and Opacus; keep config importable cheaply. Each check reads
        # its registry, so an accountant or engine registered at run time is selectable like a built-in.
        from dp_core.accounting import ACCOUNTANTS
        from dp_core.engines import ENGINES

        _require_bool(self.disable_dp, key="disable_dp")
        require_positive(self.max_grad_norm, key="max_grad_norm")
        require_in_range(self.delta, key="delta", low=0.0, high=1.0, low_open=True, high_open=True)
        ACCOUNTANTS.check(self.accountant)
        require_choice(self.clipping, key="clipping", choices=CLIPPING_MODES)
        ENGINES.check(self.grad_sample_mode, extra=("auto",))  # auto: the fastest engine that fits the model
        if self.noise_multiplier is not None:
            ok = (
                isinstance(self.noise_multiplier, (int, float))
                and not isinstance(self.noise_multiplier, bool)
                and math.isfinite(self.noise_multiplier)
                and self.noise_multiplier >= 0
            )
            require(
                ok,
                key="noise_multiplier",
                value=self.noise_multiplier,
                allowed="to be a finite number >= 0 (0 means clipping without noise, ε = ∞)",
            )
        if self.target_epsilon is not None:
            require_positive(self.target_epsilon, key="target_epsilon")
        if self.epsilon_budget is not None:
            require_positive(self.epsilon_budget, key="epsilon_budget")
        if not self.disable_dp:
            both = self.noise_multiplier is not None and self.target_epsilon is not None
            neither = self.noise_multiplier is None and self.target_epsilon is None
            if both or neither:
                raise ConfigError(
                    "Expected exactly one of noise_multiplier and target_epsilon, but got "
                    f"noise_multiplier={self.noise_multiplier!r}, target_epsilon={self.target_epsilon!r}. "
                    "Set disable_dp=true to train without privacy."
                )
        _require_bool(self.secure_mode, key="secure_mode")
        if self.secure_mode:
            # Opacus draws secure noise from torchcsprng, which no longer builds against current
            # torch. A Mersenne-Twister stream seeded from os.urandom is still not a CSPRNG, so we
            # refuse rather than claim protection against floating-point attacks we cannot give.
            raise ConfigError(
                "Expected secure_mode=false: secure noise needs a cryptographically secure "
                "generator (Opacus uses torchcsprng, which does not build with torch>=2.x "
                "releases this project supports), and dpsweep will not pretend to provide one. "
                "Train with secure_mode=false for research, and use a build with torchcsprng "
                "before deploying a model whose guarantee must resist floating-point attacks."
            )

    @property
    def is_private(self) -> bool:
        return not self.disable_dp


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "privacy": PrivacyConfig,
}
#: The keys of TrainConfig outside its sections (each section's keys are its dataclass's fields).
TOP_LEVEL_KEYS = (
    "epochs",
    "batch_size",
    "sample_rate",
    "max_physical_batch_size",
    "seed",
    "device",
    "precision",
    "test_batch_size",
    "code",
    "channels_last",
)


def _section_keys() -> dict[str, str]:
    """Map every flat key to the section that owns it."""
    return {f.name: section for section, cls in _SECTIONS.items() for f in dataclasses.fields(cls)}


def model_kwarg_name(key: object) -> str | None:
    """``"width"`` for the flat key ``"model_kwargs.width"`` (one keyword argument of the model's
    builder, as a sweep's axis sets it), else None."""
    if isinstance(key, str) and key.startswith("model_kwargs."):
        name = key.removeprefix("model_kwargs.")
        return name if name.isidentifier() else None
    return None


def known_keys() -> tuple[str, ...]:
    return tuple(sorted([*_section_keys(), *TOP_LEVEL_KEYS]))


def unknown_key_error(key: str, known: tuple[str, ...], *, where: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    place = f" in {where}" if where else ""
    return ConfigError(f"Unknown key {key!r}{place}.{hint} Known keys: {', '.join(known)}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that determines one DP-SGD training run."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    privacy: PrivacyConfig = dataclasses.field(default_factory=lambda: PrivacyConfig(target_epsilon=3.0))
    epochs: int = 20
    # The *expected* logical batch size: with Poisson sampling each step's batch size varies, and
    # sample_rate = batch_size / N. Give either batch_size or sample_rate.
    batch_size: int | None = 256
    sample_rate: float | None = None
    max_physical_batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    # fp32, bf16, tf32, or auto (bf16 on a CUDA GPU with native bf16, else fp32): the forward and
    # backward passes only; DP's norms, sums and noise stay float32 (dp_core.precision).
    precision: str = "auto"
    test_batch_size: int = 1024
    # Folders that an own "module:function" (the model's) is imported from; a sweep sets the
    # space file's folder, so that dp_core.train --config imports the module the sweep trained.
    code: tuple[str, ...] = ()
    # Convolutions in NHWC (torch.channels_last) for image data: faster on GPUs' tensor cores; only
    # engines whose per-sample gradients stay exact in that layout accept it (dp_core.train).
    channels_last: bool = False

    def __post_init__(self) -> None:
        require(
            isinstance(self.code, (list, tuple)) and all(isinstance(folder, str) for folder in self.code),
            key="code",
            value=self.code,
            allowed="to be a list of folders to import the configuration's own modules from",
        )
        object.__setattr__(self, "code", tuple(self.code))
        if is_reference(self.model.model):
            from dp_core.models import check_builder

            check_builder(self.model.model, model_kwargs=self.model.model_kwargs, code=self.code)
        _require_int(self.epochs, key="epochs", low=1)
        if (self.batch_size is None) == (self.sample_rate is None):
            raise ConfigError(
                "Expected exactly one of batch_size and sample_rate, but got "
                f"batch_size={self.batch_size!r}, sample_rate={self.sample_rate!r}."
            )
        if self.batch_size is not None:
            _require_int(self.batch_size, key="batch_size", low=1)
        if self.sample_rate is not None:
            require_in_range(self.sample_rate, key="sample_rate", low=0.0, high=1.0, low_open=True)
        if self.max_physical_batch_size is not None:
            _require_int(self.max_physical_batch_size, key="max_physical_batch_size", low=1)
        _require_int(self.seed, key="seed", low=0)
        require_choice(self.device, key="device", choices=DEVICES)
        from dp_core.precision import PRECISIONS  # imported here: precision imports torch

        require_choice(self.precision, key="precision", choices=PRECISIONS)
        _require_int(self.test_batch_size, key="test_batch_size", low=1)
        _require_bool(self.channels_last, key="channels_last")
        if self.privacy.is_private and self.privacy.grad_sample_mode != "auto":  # auto's choice: dp_core.train
            from dp_core.engines import require_augmult, require_channels_last  # they import torch and Opacus

            require_augmult(self.privacy.grad_sample_mode, self.data.augmult)
            if self.channels_last:
                require_channels_last(self.privacy.grad_sample_mode)

    # ---- building -----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "") -> TrainConfig:
        """Build from one flat mapping; unknown keys fail with the closest known key.

        ``where`` (e.g. "search_spaces/x.yaml") is named in error messages so users know which
        file or flag to fix.
        """
        owners = _section_keys()
        per_section: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        top: dict[str, Any] = {}
        model_kwargs: dict[str, Any] = {}  # from flat "model_kwargs.NAME" keys
        for key, value in values.items():
            if key in owners:
                per_section[owners[key]][key] = value
            elif key in TOP_LEVEL_KEYS:
                top[key] = value
            elif (name := model_kwarg_name(key)) is not None:
                model_kwargs[name] = value
            else:
                raise unknown_key_error(str(key), known_keys(), where=where)
        given = per_section["model"].get("model_kwargs", {})
        if model_kwargs and isinstance(given, Mapping):  # a flat key sets one argument of the mapping
            per_section["model"]["model_kwargs"] = {**given, **model_kwargs}
        if "batch_size" not in top and "sample_rate" in top:
            top["batch_size"] = None
        if (
            "noise_multiplier" not in per_section["privacy"]
            and "target_epsilon" not in per_section["privacy"]
            and not per_section["privacy"].get("disable_dp", False)
        ):
            per_section["privacy"]["target_epsilon"] = 3.0
        try:
            sections = {name: _SECTIONS[name](**kw) for name, kw in per_section.items()}
            return cls(**sections, **top)
        except ConfigError as error:
            if where:
                raise ConfigError(f"{error} (in {where})") from None
            raise

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping ``from_dict`` accepts (round-trips exactly)."""
        flat: dict[str, Any] = {}
        for name in _SECTIONS:
            flat.update(dataclasses.asdict(getattr(self, name)))
        if isinstance(self.data.dataset, DatasetSpec):
            flat["dataset"] = self.data.dataset.to_mapping()
        flat.update({key: getattr(self, key) for key in TOP_LEVEL_KEYS})
        flat["code"] = list(self.code)  # as JSON and YAML write it, and as a space's trials carry it
        return flat

    def replace(self, **flat_changes: Any) -> TrainConfig:
        """A copy with some flat keys changed, validated like a fresh config."""
        merged = {**self.to_dict(), **flat_changes}
        if "sample_rate" in flat_changes and flat_changes["sample_rate"] is not None:
            merged["batch_size"] = None
        if "batch_size" in flat_changes and flat_changes["batch_size"] is not None:
            merged["sample_rate"] = None
        if "noise_multiplier" in flat_changes and flat_changes["noise_multiplier"] is not None:
            merged["target_epsilon"] = None
        if "target_epsilon" in flat_changes and flat_changes["target_epsilon"] is not None:
            merged["noise_multiplier"] = None
        return TrainConfig.from_dict(merged)

    # ---- checks and quantities that need the training-set size --------------------------------

    def resolved_sample_rate(self, train_size: int) -> float:
        if self.sample_rate is not None:
            return self.sample_rate
        assert self.batch_size is not None  # guaranteed by __post_init__
        return self.batch_size / train_size

    def steps_per_epoch(self, train_size: int) -> int:
        # Poisson sampling draws each example with probability q; an "epoch" is 1/q such draws,
        # the count Opacus' UniformWithReplacementSampler uses.
        return max(1, int(1 / self.resolved_sample_rate(train_size)))

    def check_against(self, train_size: int) -> None:
        """The checks that need N: δ < 1/N (else releasing one example outright is 'private')."""
        if self.batch_size is not None:
            require(
                self.batch_size <= train_size,
                key="batch_size",
                value=self.batch_size,
                allowed=f"to be at most the training-set size N={train_size}",
            )
        if self.privacy.is_private:
            require(
                self.privacy.delta < 1.0 / train_size,
                key="delta",
                value=self.privacy.delta,
                allowed=(
                    f"to be < 1/N = {1.0 / train_size:.3g} (N={train_size} training examples of "
                    f"{dataset_name(self.data.dataset)}); a larger δ permits leaking a whole example"
                ),
            )
