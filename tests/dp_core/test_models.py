"""Tests for dp_core.models: every zoo model builds, validates and gives exact per-sample gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from opacus import GradSampleModule, PrivacyEngine
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from dp_core import models
from dp_core.errors import ConfigError
from dp_core.models import MODELS, build_model, make_dp_compatible, register_model

# Opacus' expected chatter: the first layer's input needs no grad; tests need no secure RNG.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing", "ignore:Secure RNG turned off")

NUM_CLASSES = 5
FITTING_SHAPE = {
    "mlp": (1, 8, 8),
    "digits_cnn": (1, 8, 8),
    "mnist_cnn": (1, 28, 28),
    "cifar_cnn": (3, 32, 32),
    "resnet18_gn": (3, 32, 32),
    "resnet18_gn_cifar": (3, 8, 8),
    "wrn16_4": (3, 32, 32),
    "wrn": (3, 8, 8),
    "tabular_mlp": (30,),
}
# Keep their batches at 2 so the file stays fast on 2 CPU cores.
LARGE = {"resnet18_gn", "resnet18_gn_cifar", "wrn16_4", "wrn"}
# The smallest of a family where the default is large and the layer types stay the same (WRN-10-1 for WRN-16-4).
SMALL_KWARGS = {"wrn": {"depth": 10, "width": 1}}


def test_every_builtin_model_has_a_test_shape() -> None:
    assert set(MODELS) == set(FITTING_SHAPE)


@pytest.mark.parametrize("name", sorted(FITTING_SHAPE))
def test_builds_forwards_and_validates(name: str) -> None:
    torch.manual_seed(0)
    shape = FITTING_SHAPE[name]
    model = build_model(name, input_shape=shape, num_classes=NUM_CLASSES)
    assert model.training
    assert ModuleValidator.validate(model, strict=False) == []
    assert GradSampleModule.validate(model, strict=False) == []
    assert model(torch.randn(2, *shape)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize(
    "name, shape",
    [("mlp", (3, 5, 7)), ("digits_cnn", (3, 12, 9)), ("mnist_cnn", (3, 32, 36)), ("cifar_cnn", (1, 16, 20)),
     ("resnet18_gn", (1, 28, 28)), ("wrn16_4", (1, 8, 8)), ("mlp", (13,)), ("tabular_mlp", (1, 8, 8)),
     ("resnet18_gn_cifar", (1, 8, 8)), ("wrn", (1, 8, 8))],
)  # fmt: skip
def test_other_fitting_shapes(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, input_shape=shape, num_classes=3, gn_groups=4)
    assert model(torch.randn(2, *shape)).shape == (2, 3)


def _disable_dropout(model: nn.Module) -> None:
    # Not model.eval(): Opacus only records activations of layers in training mode. Dropout off makes the
    # batched pass and the one-example-at-a-time reference compute the same function.
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()


@pytest.mark.parametrize("name", sorted(FITTING_SHAPE))
def test_per_sample_gradients_match_naive_loop(name: str) -> None:
    torch.manual_seed(0)
    shape = FITTING_SHAPE[name]
    batch = 2 if name in LARGE else 3
    model = build_model(name, input_shape=shape, num_classes=NUM_CLASSES, model_kwargs=SMALL_KWARGS.get(name))
    _disable_dropout(model)
    reference = copy.deepcopy(model)  # before GradSampleModule adds its hooks
    x, y = torch.randn(batch, *shape), torch.randint(0, NUM_CLASSES, (batch,))

    gsm = GradSampleModule(model, loss_reduction="sum")  # hooks mode; "mean" would rescale by the batch size
    nn.CrossEntropyLoss(reduction="sum")(gsm(x), y).backward()

    names, params = zip(*[(n, p) for n, p in reference.named_parameters() if p.requires_grad])
    expected = [torch.zeros(batch, *p.shape) for p in params]
    for i in range(batch):
        loss = nn.CrossEntropyLoss(reduction="sum")(reference(x[i : i + 1]), y[i : i + 1])
        for store, grad in zip(expected, torch.autograd.grad(loss, params)):
            store[i] = grad
    got = dict(model.named_parameters())
    for param_name, want in zip(names, expected):
        grad_sample = got[param_name].grad_sample
        assert grad_sample is not None, param_name
        assert torch.allclose(grad_sample, want, atol=1e-5, rtol=1e-4), param_name


def _resnet18_with_inplace_relu() -> nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES, norm_layer=lambda c: nn.GroupNorm(8, c))
    assert model.relu.inplace  # the torchvision default this regression test is about
    return model


def test_plain_torchvision_resnet18_fails_under_opacus_hooks() -> None:
    # Documents why make_dp_compatible rewrites in-place ops: if torch ever allows this, the rewrite is moot.
    gsm = GradSampleModule(_resnet18_with_inplace_relu())
    with pytest.raises(RuntimeError, match="BackwardHookFunction is a view and is being modified inplace"):
        gsm(torch.randn(2, 3, 32, 32))


def test_torchvision_resnet18_with_inplace_relu_trains_one_private_step() -> None:
    torch.manual_seed(0)
    model = make_dp_compatible(_resnet18_with_inplace_relu())
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.randint(0, NUM_CLASSES, (4,)))
    model, optimizer, loader = PrivacyEngine().make_private(
        module=model, optimizer=optimizer, data_loader=DataLoader(data, batch_size=2),
        noise_multiplier=1.0, max_grad_norm=1.0,
    )  # fmt: skip
    x, y = next((x, y) for x, y in loader if len(x) > 0)  # Poisson sampling may draw an empty batch
    optimizer.zero_grad()
    nn.CrossEntropyLoss()(model(x), y).backward()
    optimizer.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def test_batchnorm_is_replaced_by_groupnorm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
    fixed = make_dp_compatible(model)
    assert isinstance(fixed[1], nn.GroupNorm) and fixed[1].num_channels == 8
    assert not fixed[2].inplace
    assert ModuleValidator.validate(fixed, strict=False) == []
    assert fixed(torch.randn(2, 3, 6, 6)).shape == (2, 8, 4, 4)


def test_keeps_eval_mode_of_the_given_model() -> None:
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    assert not make_dp_compatible(model).training


def test_unfixable_lstm_raises_config_error() -> None:
    # ModuleValidator flags every nn.LSTM; its fixer builds a DPLSTM, which has no proj_size, so it fails.
    with pytest.raises(ConfigError, match="cannot be trained privately") as info:
        make_dp_compatible(nn.Sequential(nn.LSTM(4, 8, proj_size=2)))
    assert "- 0 (LSTM): We do not support nn.LSTM" in str(info.value)
    assert "ModuleValidator.fix() failed" in str(info.value)


def test_instancenorm_with_running_stats_raises_config_error() -> None:
    # fix() turns track_running_stats off but keeps the buffers, which GradSampleModule (make_private) rejects.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, affine=True, track_running_stats=True))
    with pytest.raises(ConfigError, match=r"cannot be trained privately(.|\n)*- 1 \(InstanceNorm2d\): .*buffers"):
        make_dp_compatible(model)


def test_non_affine_batchnorm_raises_config_error() -> None:
    # Opacus' validator only inspects trainable layers, so it misses this one, which still mixes examples.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False))
    assert ModuleValidator.validate(model, strict=False) == []
    with pytest.raises(ConfigError, match=r"- 1 \(BatchNorm2d\): non-trainable BatchNorm"):
        make_dp_compatible(model)


def test_registered_builder_is_built_and_checked() -> None:
    register_model("lstm_proj", lambda **kw: nn.Sequential(nn.LSTM(4, 8, proj_size=2)))
    try:
        assert "lstm_proj" in models.MODELS
        with pytest.raises(ConfigError, match="cannot be trained privately"):
            build_model("lstm_proj", input_shape=(1, 8, 8), num_classes=2)
    finally:
        MODELS.unregister("lstm_proj")  # leave the real registry as it was


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="model") as info:
        build_model("resnet1000", input_shape=(3, 32, 32), num_classes=10)
    assert all(name in str(info.value) for name in MODELS)
    assert "resnet1000" in str(info.value)


def test_too_small_input_names_model_and_shape() -> None:
    with pytest.raises(ConfigError, match=r"mnist_cnn.*\(1, 8, 8\)"):
        build_model("mnist_cnn", input_shape=(1, 8, 8), num_classes=10)


@pytest.mark.parametrize("name", ["resnet18_gn", "resnet18_gn_cifar", "wrn16_4", "wrn"])
def test_gn_groups_must_divide_channels(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"gn_groups.*{name}.*gn_groups=7"):
        build_model(name, input_shape=(3, 32, 32), num_classes=10, gn_groups=7)


@pytest.mark.parametrize(
    "kwargs",
    [{"input_shape": (8, 8)}, {"input_shape": (1, 0, 8)}, {"num_classes": 0}, {"gn_groups": 0}],
)
def test_bad_arguments_raise_config_error(kwargs: dict) -> None:
    args = {"input_shape": (1, 8, 8), "num_classes": 10, **kwargs}
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        build_model("mlp", **args)


def test_ws_conv_convolves_with_the_standardised_weight_times_its_gain() -> None:
    torch.manual_seed(0)
    conv = models.WSConv2d(3, 4, 3, padding=1, bias=False)
    weight = conv.standardized_weight().detach()
    fan_in = 3 * 3 * 3
    torch.testing.assert_close(weight.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(weight.var(dim=(1, 2, 3), unbiased=False) * fan_in, torch.ones(4))
    with torch.no_grad():
        conv.gain.mul_(torch.arange(1.0, 5.0).view(4, 1, 1, 1))
        conv.weight.mul_(7.0).add_(3.0)  # invariant to the weight's scale and offset per output channel
    x = torch.randn(2, 3, 5, 5)
    expected = nn.functional.conv2d(x, weight * torch.arange(1.0, 5.0).view(4, 1, 1, 1), padding=1)
    torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-5)


def test_wrn_takes_depth_and_width_and_standardises_every_convolution() -> None:
    model = build_model("wrn", input_shape=(3, 8, 8), num_classes=3, gn_groups=16)  # WRN-16-4 (De et al. 2022)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is models.WSConv2d for m in convs)
    assert all(m.num_groups == 16 for m in model.modules() if isinstance(m, nn.GroupNorm))
    blocks = [m for m in model.modules() if type(m).__name__ == "_WideBlock"]
    assert [b.conv2.out_channels for b in blocks] == [64, 64, 128, 128, 256, 256]  # (16 - 4) / 6 = 2 per stage
    tiny = build_model("wrn", input_shape=(3, 8, 8), num_classes=3, model_kwargs={"depth": 10, "width": 1})
    assert [b.conv2.out_channels for b in tiny.modules() if type(b).__name__ == "_WideBlock"] == [16, 32, 64]
    assert tiny(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    for bad in ({"depth": 12}, {"depth": 4}, {"width": 0}, {"width": 1.5}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build_model("wrn", input_shape=(3, 8, 8), num_classes=3, model_kwargs=bad)


def test_the_cifar_resnet_keeps_4x4_maps_at_its_last_stage_on_32x32_images() -> None:
    model = build_model("resnet18_gn_cifar", input_shape=(3, 32, 32), num_classes=10)
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    seen = []
    model.layer4.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    model(torch.zeros(1, 3, 32, 32))
    assert seen == [torch.Size([1, 512, 4, 4])]
    imagenet_stem = build_model("resnet18_gn", input_shape=(3, 32, 32), num_classes=10)  # unchanged: 1x1 maps
    imagenet_stem.layer4.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    imagenet_stem(torch.zeros(1, 3, 32, 32))
    assert seen[-1] == torch.Size([1, 512, 1, 1])
