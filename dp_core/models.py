"""The model zoo: DP-compatible classifiers by name, for images (C, H, W) and tabular data (D,)."""

from __future__ import annotations

import functools
import inspect
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator

from dp_core._ws_conv import WSConv2d
from dp_core.errors import ConfigError, require
from dp_core.registry import Registry
from dp_core.user_code import import_from_code, is_reference, on_import_path

__all__ = [
    "MODELS",
    "WSConv2d",
    "build_configured_model",
    "build_model",
    "check_builder",
    "make_dp_compatible",
    "register_model",
]

Shape = tuple[int, ...]  # (C, H, W) for images, (D,) for feature vectors

#: The model zoo by name: ``builder(input_shape=, num_classes=, gn_groups=, **model_kwargs) -> nn.Module``. A model
#: registered at run time is selectable as ``model`` in a config (``ModelConfig`` validates against
#: this registry) and built like a built-in.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register  # the README's name for it: ``register_model(name, builder)``


def build_model(
    name: str,
    *,
    input_shape: Shape,
    num_classes: int,
    gn_groups: int = 8,
    model_kwargs: Mapping[str, Any] | None = None,
    fix_model: bool = False,
    code: Sequence[str] = (),
) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` = (C, H, W) or (D,) and make it DP-compatible.

    Args:
        name: a zoo (or registered) model, called ``builder(input_shape=, num_classes=, gn_groups=,
            **model_kwargs)``; or the user's own ``"module:function"``, called
            ``function(input_shape=, num_classes=, **model_kwargs)`` (:mod:`dp_core.user_code`).
        model_kwargs: the builder's own keyword arguments (``width``, ``depth``, ...).
        fix_model: an own model that Opacus cannot train is refused, naming its modules; with
            ``fix_model`` Opacus' ``ModuleValidator.fix`` replaces them (BatchNorm -> GroupNorm) instead.
        code: folders the own model's module is imported from.

    Raises:
        ConfigError: a bad shape or count; a builder that cannot be imported or called so; an own
            model that Opacus cannot train privately, or whose output is not ``(batch, num_classes)``.
    """
    shape_ok = (
        isinstance(input_shape, (tuple, list))
        and len(input_shape) in (1, 3)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape)
    )
    require(shape_ok, key="input_shape", value=input_shape, allowed="to be (C, H, W) or (D,) with positive ints")
    for key, value in (("num_classes", num_classes), ("gn_groups", gn_groups)):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        require(ok, key=key, value=value, allowed="to be an int >= 1")
    shape, kwargs = tuple(input_shape), dict(model_kwargs or {})
    if not is_reference(name):
        builder = check_builder(name, model_kwargs=kwargs)
        return make_dp_compatible(builder(input_shape=shape, num_classes=num_classes, gn_groups=gn_groups, **kwargs))
    with on_import_path(code):  # the builder may import its own modules as it runs
        builder = check_builder(name, model_kwargs=kwargs, code=code)
        model = builder(input_shape=shape, num_classes=num_classes, **kwargs)
    if not isinstance(model, nn.Module):
        got = type(model).__name__
        raise ConfigError(f"Expected model={name!r} to return a torch.nn.Module, but it returned a {got}.")
    model = _own_model_for_opacus(model, name=name, fix_model=fix_model)
    _check_output(model, name=name, input_shape=shape, num_classes=num_classes)
    return model


def build_configured_model(config: Any, *, input_shape: Shape, num_classes: int) -> nn.Module:
    """:func:`build_model` with a ``dp_core.config.TrainConfig``'s model settings (its model, gn_groups,
    model_kwargs, fix_model) and code folders. (Not annotated as one: dp_core.config imports this module.)"""
    settings = config.model
    return build_model(
        settings.model,
        input_shape=input_shape,
        num_classes=num_classes,
        gn_groups=settings.gn_groups,
        model_kwargs=settings.model_kwargs,
        fix_model=settings.fix_model,
        code=config.code,
    )


def check_builder(name: str, *, model_kwargs: Mapping[str, Any], code: Sequence[str] = ()) -> Callable[..., nn.Module]:
    """The builder of model ``name``, checked to accept the call :func:`build_model` makes (no model is built).

    Raises:
        ConfigError: an unknown zoo name, an own builder that does not import, or a signature that
            refuses ``input_shape``, ``num_classes`` (and ``gn_groups`` for the zoo) and ``model_kwargs``.
    """
    own = is_reference(name)
    builder = import_from_code(name, key="model", code=code) if own else MODELS.get(name)
    call = "input_shape=..., num_classes=..." + ("" if own else ", gn_groups=...")
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError):  # a builtin or C callable without one: the call itself will tell
        return builder
    try:
        signature.bind(input_shape=(1, 1, 1), num_classes=2, **({} if own else {"gn_groups": 8}), **model_kwargs)
    except TypeError as error:
        kwargs = "".join(f", {k}={v!r}" for k, v in model_kwargs.items())
        raise ConfigError(
            f"Expected model={name!r} to accept the call {name.rpartition(':')[2]}({call}{kwargs}) (the keyword "
            f"arguments after num_classes are model_kwargs), but its signature {signature} refuses it: {error}."
        ) from None
    return builder


def _own_model_for_opacus(model: nn.Module, *, name: str, fix_model: bool) -> nn.Module:
    """An own model as Opacus will train it: refused naming what Opacus cannot keep private, or fixed on opt-in."""
    model.train()  # Opacus' validator rejects eval mode; that is a run-time switch, not an architecture flaw
    if not ModuleValidator.validate(model, strict=False) and not _problems(model):
        _remove_inplace_ops(model)
        return model
    if fix_model:
        return make_dp_compatible(model)
    raise ConfigError(
        f"Expected model={name!r} to build a model that Opacus can train privately, but it has modules Opacus "
        "cannot keep private:\n  - "
        + "\n  - ".join(_problems(model) or ["(see opacus.validators.ModuleValidator.validate)"])
        + "\nUse nn.GroupNorm instead of BatchNorm (per-example normalisation: no statistic shared across a batch), "
        "or set fix_model: true to let Opacus' ModuleValidator.fix replace these modules (BatchNorm becomes "
        "GroupNorm) in the model that is trained."
    )


def _check_output(model: nn.Module, *, name: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    """One forward pass on two zero inputs, in eval mode (no dropout draws, no RNG consumed)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(2, *input_shape))
    except Exception as error:  # the user's forward pass: quote whatever it raised
        raise ConfigError(
            f"Expected model={name!r} to take a batch of inputs of shape (batch, {', '.join(map(str, input_shape))}), "
            f"but its forward pass on shape (2, {', '.join(map(str, input_shape))}) raised {type(error).__name__}: "
            f"{error}."
        ) from error
    finally:
        model.train(was_training)
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if shape != (2, num_classes):
        raise ConfigError(
            f"Expected model={name!r} to return logits of shape (batch, num_classes) = (2, {num_classes}) for a batch "
            f"of 2, but got {shape}: build the last layer with num_classes outputs (the builder receives it)."
        )


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """Return ``model`` fixed for Opacus (BatchNorm -> GroupNorm, no in-place ops), or raise ConfigError.

    Works in place where it can, but ``ModuleValidator.fix`` returns a copy: always use the result.
    """
    was_training = model.training
    model.train()  # Opacus' validator rejects eval mode; that is a run-time switch, not an architecture flaw
    if ModuleValidator.validate(model, strict=False):
        try:
            model = ModuleValidator.fix(model)
        except Exception as exc:  # some fixers fail outright, e.g. nn.LSTM(proj_size>0) -> DPLSTM
            why = f"ModuleValidator.fix() failed with {type(exc).__name__}: {exc}"
            raise ConfigError(_cannot_train(model, why)) from exc
    _remove_inplace_ops(model)
    if _problems(model):
        raise ConfigError(_cannot_train(model, "ModuleValidator.fix() could not repair it"))
    return model.train(was_training)


def _problems(model: nn.Module) -> list[str]:
    """One line per offending module, named, with Opacus' reason (ModuleValidator does not name them)."""
    lines = []
    for name, module in trainable_modules(model):
        where = f"{name or '<root>'} ({type(module).__name__})"
        validator = ModuleValidator.VALIDATORS.get(type(module))
        lines += [f"{where}: {err}" for err in (validator(module) if validator else [])]
        if any(True for _ in module.buffers()):  # what GradSampleModule(strict=True), hence make_private, rejects
            lines.append(
                f"{where}: trainable layer with buffers (e.g. running statistics), which Opacus cannot keep private"
            )
    for name, module in model.named_modules():
        # A frozen or affine=False BatchNorm escapes ModuleValidator (it only looks at trainable layers),
        # yet in training mode it still normalises each example with its batch peers' statistics.
        frozen = not any(p.requires_grad for p in module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and frozen:
            lines.append(
                f"{name or '<root>'} ({type(module).__name__}): non-trainable BatchNorm still mixes the "
                "examples of a batch through its batch statistics, which leaks privacy"
            )
    return lines


def _cannot_train(model: nn.Module, why: str) -> str:
    return f"{type(model).__name__} cannot be trained privately with Opacus ({why}):\n  - " + "\n  - ".join(
        _problems(model) or ["(no per-module detail)"]
    )


# Opacus hooks (register_full_backward_hook) return each hooked layer's output as a view made by
# BackwardHookFunction; modifying it in place raises "RuntimeError: Output 0 of BackwardHookFunction is
# a view and is being modified inplace" (torch 2.14). torchvision's resnet18 does so twice: ReLU(inplace=True)
# right after a norm layer, and `out += identity` after bn2/bn3. Hence the out-of-place blocks below.
@functools.cache
def _torchvision_out_of_place() -> dict[type, type]:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    class _OutOfPlaceBasicBlock(BasicBlock):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + identity)

    class _OutOfPlaceBottleneck(Bottleneck):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    return {BasicBlock: _OutOfPlaceBasicBlock, Bottleneck: _OutOfPlaceBottleneck}


def _remove_inplace_ops(model: nn.Module) -> None:
    # torchvision is imported only where needed (a slow import); a model without it has no resnet blocks.
    out_of_place = _torchvision_out_of_place() if "torchvision" in sys.modules else {}
    for module in model.modules():
        if getattr(module, "inplace", None) is True:  # ReLU, LeakyReLU, SiLU, Hardtanh, Dropout, ...
            module.inplace = False  # flipping the flag keeps module sharing (resnet reuses self.relu)
        if type(module) in out_of_place:
            module.__class__ = out_of_place[type(module)]  # same parameters and state_dict keys


# ---------------------------------------------------------------------------------------------- builders


def _require_hw(model: str, shape: Shape, minimum: int) -> None:
    ok = len(shape) == 3 and shape[1] >= minimum and shape[2] >= minimum
    require(ok, key="input_shape", value=shape, allowed=f"to be (C, H, W) with H, W >= {minimum} for model {model!r}")


def _group_norm(model: str, groups: int) -> Callable[[int], nn.GroupNorm]:
    """A norm_layer factory that explains a bad gn_groups instead of GroupNorm's bare ValueError."""

    def make(channels: int) -> nn.GroupNorm:
        allowed = f"to divide every GroupNorm channel count of model {model!r}, including {channels}"
        require(channels % groups == 0, key="gn_groups", value=groups, allowed=allowed)
        return nn.GroupNorm(groups, channels)

    return make


def _mlp(*, input_shape: Shape, num_classes: int, gn_groups: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 128), nn.ReLU(), nn.Linear(128, num_classes))


def _tabular_mlp(*, input_shape: Shape, num_classes: int, gn_groups: int, width: int = 64, depth: int = 2) -> nn.Module:
    """``depth`` hidden layers of ``width`` units (ReLU) for a table's D features (or any input, flattened)."""
    for key, value in (("width", width), ("depth", depth)):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        require(ok, key=key, value=value, allowed="to be an integer >= 1 for model 'tabular_mlp'")
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, num_classes))


def _digits_cnn(*, input_shape: Shape, num_classes: int, gn_groups: int) -> nn.Module:
    _require_hw("digits_cnn", input_shape, 8)
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, num_classes),
    )  # fmt: skip


def _mnist_cnn(*, input_shape: Shape, num_classes: int, gn_groups: int) -> nn.Module:
    c, h, w = input_shape
    _require_hw("mnist_cnn", input_shape, 28)
    flat = 20 * (((h - 4) // 2 - 4) // 2) * (((w - 4) // 2 - 4) // 2)  # after two (conv5, pool2): 320 at 28x28
    # Logits, not log_softmax as in the quickstart: the trainer applies CrossEntropyLoss.
    return nn.Sequential(
        nn.Conv2d(c, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(10, 20, 5), nn.Dropout2d(), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(flat, 50), nn.ReLU(), nn.Dropout(), nn.Linear(50, num_classes),
    )  # fmt: skip


def _cifar_cnn(*, input_shape: Shape, num_classes: int, gn_groups: int) -> nn.Module:
    _require_hw("cifar_cnn", input_shape, 16)
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(((input_shape[0], 32), (32, 64), (64, 64), (64, 128))):
        pool = nn.AvgPool2d(2) if i < 3 else nn.AdaptiveAvgPool2d(1)
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), pool]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128, num_classes))


def _torchvision_resnet18(model: str, *, input_shape: Shape, num_classes: int, gn_groups: int) -> nn.Module:
    norm = _group_norm(model, gn_groups)
    import torchvision.models  # here, not at import: a slow import that most runs do not need

    return torchvision.models.resnet18(weights=None, num_classes=num_classes, norm_layer=norm)


def _resnet18_gn(*, input_shape: Shape, num_classes: int, gn_groups: int) -> nn.Module:
    """torchvision's ResNet-18 (ImageNet stem: 7x7 stride-2 conv and max-pool), GroupNorm for BatchNorm."""
    _require_hw("resnet18_gn", input_shape, 16)  # 32x downsampling; smaller inputs leave nothing to pool
    model = _torchvision_resnet18("resnet18_gn", input_shape=input_shape, num_classes=num_classes, gn_groups=gn_groups)
    if input_shape[0] != 3:
        model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _resnet18_gn_cifar(*, input_shape: Shape, num_classes: int, gn_groups: int) -> nn.Module:
    """ResNet-18 with GroupNorm and the CIFAR stem (He et al. 2016, Sec. 4.2): one 3x3 stride-1 conv and
    no max-pool, so that 32x32 images reach the last stage as 4x4 maps rather than 1x1."""
    _require_hw("resnet18_gn_cifar", input_shape, 8)  # 8x downsampling
    model = _torchvision_resnet18(
        "resnet18_gn_cifar", input_shape=input_shape, num_classes=num_classes, gn_groups=gn_groups
    )
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class _WideBlock(nn.Module):
    """Pre-activation basic block of a Wide-ResNet; the residual add is out of place (see above)."""

    def __init__(
        self, cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module], conv: type[nn.Conv2d] = nn.Conv2d
    ) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(cin), conv(cin, cout, 3, stride, 1, bias=False)
        self.norm2, self.conv2 = norm(cout), conv(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = conv(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.norm1(x))
        out = self.conv2(self.relu(self.norm2(self.conv1(a))))
        return out + (x if self.shortcut is None else self.shortcut(a))


def _wrn16_4(*, input_shape: Shape, num_classes: int, gn_groups: int) -> nn.Module:
    _require_hw("wrn16_4", input_shape, 8)
    norm = _group_norm("wrn16_4", gn_groups)
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)]
    cin = 16
    for width, stride in ((64, 1), (128, 2), (256, 2)):  # depth 16 = 6 * 2 blocks + 4; widen factor 4
        layers += [_WideBlock(cin, width, stride, norm), _WideBlock(width, width, 1, norm)]
        cin = width
    layers += [norm(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def _wrn(*, input_shape: Shape, num_classes: int, gn_groups: int, depth: int = 16, width: int = 4) -> nn.Module:
    """WRN-``depth``-``width`` (Zagoruyko & Komodakis 2016) as De et al. 2022 train it with DP-SGD:
    pre-activation blocks, GroupNorm and scaled weight standardisation (:class:`WSConv2d`) in every
    convolution. Stages of 16·width, 32·width and 64·width channels, (depth − 4) / 6 blocks each;
    WRN-16-4 by default. De et al. use 16 GroupNorm groups (``gn_groups: 16``)."""
    ok = isinstance(depth, int) and not isinstance(depth, bool) and depth >= 10 and (depth - 4) % 6 == 0
    require(ok, key="depth", value=depth, allowed="to be an integer 6n + 4 >= 10 (10, 16, 22, 28, ...) for model 'wrn'")
    ok = isinstance(width, int) and not isinstance(width, bool) and width >= 1
    require(ok, key="width", value=width, allowed="to be an integer >= 1 for model 'wrn'")
    _require_hw("wrn", input_shape, 8)
    norm = _group_norm("wrn", gn_groups)
    layers: list[nn.Module] = [WSConv2d(input_shape[0], 16, 3, padding=1, bias=False)]
    cin = 16
    for channels, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
        for block in range((depth - 4) // 6):
            layers.append(_WideBlock(cin, channels, stride if block == 0 else 1, norm, conv=WSConv2d))
            cin = channels
    layers += [norm(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


for _name, _builder in (
    ("mlp", _mlp),
    ("digits_cnn", _digits_cnn),
    ("mnist_cnn", _mnist_cnn),
    ("cifar_cnn", _cifar_cnn),
    ("resnet18_gn", _resnet18_gn),
    ("resnet18_gn_cifar", _resnet18_gn_cifar),
    ("wrn16_4", _wrn16_4),
    ("wrn", _wrn),
    ("tabular_mlp", _tabular_mlp),
):
    MODELS.register(_name, _builder)
del _name, _builder
