"""Per-sample gradient engines: one DP-SGD step protocol, several ways to compute clipped gradients.

Every engine turns ``(model, optimizer)`` into a ``PrivateStep`` whose ``backward(images, labels)``
leaves in the optimizer exactly what its ``step()`` needs for one (physical) batch, so the
training loop is the same whatever the engine:

    loss = step.backward(images, labels)   # engine-specific: hooks, two passes, book-keeping...
    step.optimizer.step()                  # clip (if not done), sum, add N(0, σ²C²) once, divide by qN
    step.optimizer.zero_grad(set_to_none=True)

Engines (names as ``grad_sample_mode``):

- ``hooks``: Opacus ``GradSampleModule``: per-layer per-sample gradient formulas in backward hooks.
- ``functorch``: the same hooks, but every layer's per-sample gradients from ``torch.func.vmap``.
- ``ew``: PyTorch's ExpandedWeights (``call_for_per_sample_grads``) behind Opacus'
  ``GradSampleModuleExpandedWeights``.
- ``ghost``: Opacus' fast gradient / ghost clipping: per-sample *norms* in a first backward (ghost
  norms for Linear, instantiated gradients elsewhere), then a second backward of Σ_i c_i ℓ_i.
  Flat clipping only.
- ``bk``: our book-keeping engine (``dp_core._bookkeeping``): per-layer choice between ghost norms
  and instantiated gradients, one output-only backward and no second pass.

With augmentation multiplicity (``augmult`` K > 1, ``dp_core.augment``) each example enters as K
views and its gradient is the mean of theirs, clipped once (``PrivateStep.with_views``): engines
that fill ``p.grad_sample`` (hooks, functorch, ew) average the K rows of an example before the
optimizer clips (``AveragedViewsStep``); bk treats the K views as more positions of one example;
ghost clips every row inside Opacus' backward, so it refuses augmult.

Under mixed precision (``dp_core.precision``) the forward and backward passes may run in bf16, but
every engine measures per-example norms, forms clipping factors and sums the clipped gradients in
float32, on exactly the per-example values it sums; ghost, whose clipped sum comes from a second
backward through the bf16 graph, refuses bf16.

``auto`` (the default) takes the first engine of ``AUTO_ORDER`` that supports the model, the
clipping mode, augmult and the precision; the order comes from ``python -m dp_core.bench`` (see
docs/benchmarks.md).

A new engine is an ``Engine`` registered as ``ENGINES.register(name, engine)``: ``grad_sample_mode``
then accepts its name in any config. ``make_dp_optimizer`` and ``GradSampleStep`` serve engines
that fill ``p.grad_sample``; every engine's noise is ``dp_core.noise.gaussian_noise``.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable

import torch
from opacus.grad_sample.grad_sample_module import GradSampleModule
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping, DPPerLayerOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.utils.module_utils import trainable_modules
from torch import nn

from dp_core import _bookkeeping
from dp_core.errors import ConfigError
from dp_core.noise import gaussian_noise
from dp_core.precision import float32_bookkeeping, upcast
from dp_core.registry import Registry

__all__ = [
    "AUTO_ORDER",
    "AveragedViewsStep",
    "ENGINES",
    "Engine",
    "PrivateStep",
    "GradSampleStep",
    "StepMechanism",
    "choose_engine",
    "make_dp_optimizer",
    "require_augmult",
    "require_channels_last",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepMechanism:
    """The Gaussian mechanism of one DP-SGD step, as every engine applies it.

    Each example's gradient is clipped to ``max_grad_norms`` (one bound over all parameters if
    ``flat``, else one per optimizer parameter), the clipped gradients are summed, N(0, σ²S²) is
    added once per logical batch (S: :attr:`sensitivity`), and the sum is divided by
    ``expected_batch_size`` (qN, never the realised batch size).
    """

    noise_multiplier: float
    max_grad_norms: tuple[float, ...]
    flat: bool
    expected_batch_size: float
    noise_generator: torch.Generator | None = None

    @property
    def sensitivity(self) -> float:
        """The L2 sensitivity of the clipped sum: C if flat, √(Σ_p C_p²) per layer."""
        return self.max_grad_norms[0] if self.flat else math.sqrt(sum(c * c for c in self.max_grad_norms))

    def optimizer_settings(self) -> dict:
        """Opacus' DP optimizer keywords for the noise, the divisor and the generator."""
        return {
            "noise_multiplier": self.noise_multiplier,
            "expected_batch_size": self.expected_batch_size,
            "loss_reduction": "mean",
            "generator": self.noise_generator,
        }


class PrivateStep(abc.ABC):
    """A model and DP optimizer wrapped by one engine, with that engine's backward protocol."""

    def __init__(self, *, engine: str, model: nn.Module, optimizer: DPOptimizer) -> None:
        self.engine = engine
        self.model = model
        self.optimizer = optimizer

    @abc.abstractmethod
    def backward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Prepare ``optimizer.step()`` for this batch; return its mean cross-entropy (detached).

        An empty batch (Poisson sampling draws them) returns 0 and leaves zero clipped gradients:
        the step still adds noise, as the accountant assumes.
        """

    @abc.abstractmethod
    def per_sample_norms(self) -> torch.Tensor:
        """‖g_i‖ (before clipping, over all parameters) of the examples of the last ``backward``."""

    def per_sample_gradients(self) -> list[torch.Tensor] | None:
        """g_i of the last ``backward``, one (B, *shape) tensor per parameter, for engines that keep them."""
        return None

    def with_views(self, *, augmult: int, views: Callable[[torch.Tensor], torch.Tensor]) -> PrivateStep:
        """This step with every example entering as ``augmult`` views (``views``: (B, ...) -> (B·K, ...),
        example-major), its gradient the mean of theirs, clipped once; for engines with ``supports_augmult``."""
        raise ConfigError(
            f"Expected an engine that averages an example's gradient over its views before clipping, but got "
            f"grad_sample_mode={self.engine!r} with augmult={augmult}."
        )


class Engine(abc.ABC):
    """How to wrap a model and optimizer for one way of computing per-sample clipped gradients."""

    name: str
    supports_per_layer: bool = True
    # False for engines that clip inside their own backward (ghost, bk): a plain
    # ``loss.backward(); optimizer.step()`` loop cannot drive them (their optimizer refuses to step).
    clips_in_optimizer_step: bool = True
    # True for engines whose step implements ``PrivateStep.with_views``: an example's K views averaged
    # before its one clipping (augmult). ghost clips every row inside Opacus' backward and cannot.
    supports_augmult: bool = False
    # Whether per-sample gradients stay exact for a model and batch in torch.channels_last
    # (tests/dp_core/test_channels_last.py): Opacus' hooks and ghost unfold convolution inputs as if
    # contiguous and get them wrong, ExpandedWeights fails on some convolutions.
    supports_channels_last: bool = False

    def unsupported(self, model: nn.Module, *, clipping: str) -> list[str]:
        """Reasons this engine cannot train ``model`` with ``clipping``; empty when it can."""
        reasons = (
            []
            if clipping == "flat" or self.supports_per_layer
            else [f"{self.name} supports flat clipping only, not clipping={clipping!r}"]
        )
        return reasons + [str(e) for e in GradSampleModule.validate(model, strict=False)]

    def unsupported_precision(self, precision: str) -> list[str]:
        """Reasons this engine cannot keep DP exact under ``precision`` (``dp_core.precision``); empty when it can."""
        return []

    @abc.abstractmethod
    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, mechanism: StepMechanism) -> PrivateStep:
        """Wrap for DP-SGD: each step clips and noises as ``mechanism`` says."""


# ---------------------------------------------------------------------------------------------- Opacus


class _AddsGaussianNoise:
    """``add_noise`` of Opacus' DP optimizers, with the noise drawn by ``dp_core.noise.gaussian_noise``.

    ``p.grad = p.summed_grad + N(0, σ²C²)``, once per logical batch, where C is the sensitivity of
    the clipped sum (Opacus' ``max_grad_norm``: the bound if flat, √(Σ_p C_p²) per layer).
    """

    def add_noise(self) -> None:
        # Opacus' adaptive clipping sets _adjusted_noise_multiplier; read it as Opacus does.
        noise_multiplier = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = gaussian_noise(
                noise_multiplier=noise_multiplier,
                sensitivity=self.max_grad_norm,
                like=p.summed_grad,
                generator=self.generator,
            )
            p.grad = noise.add_(p.summed_grad).view_as(p)
            _mark_as_processed(p.summed_grad)


def _upcast_grad_samples(params: list[nn.Parameter]) -> None:
    """Per-example gradients in float32: under autocast Opacus' hooks leave them in bf16."""
    for p in params:
        sample = getattr(p, "grad_sample", None)
        if isinstance(sample, torch.Tensor):
            p.grad_sample = upcast(sample)
        elif isinstance(sample, list):
            p.grad_sample = [upcast(g) for g in sample]


class _ClipsInFloat32:
    """``clip_and_accumulate`` of Opacus' DP optimizers, in float32 whatever the backward's precision.

    Opacus computes the norms, factors and the sum Σ_i c_i g_i in the dtype of ``p.grad_sample``:
    bf16 under autocast, which rounds a norm down by up to 0.4 % (an example above C gets through)
    and rounds the sum after adding every example. Here each g_i (possibly computed from bf16
    activations) is upcast first, and the norms and the sum are taken in float32 on those values.
    """

    def clip_and_accumulate(self) -> None:
        _upcast_grad_samples(self.params)
        with float32_bookkeeping():
            super().clip_and_accumulate()


class _DPOptimizer(_AddsGaussianNoise, _ClipsInFloat32, DPOptimizer):
    """Opacus' flat-clipping DP optimizer, clipping in float32 and noised by ``gaussian_noise``."""


class _DPPerLayerOptimizer(_AddsGaussianNoise, _ClipsInFloat32, DPPerLayerOptimizer):
    """Opacus' per-layer-clipping DP optimizer, clipping in float32 and noised by ``gaussian_noise``."""


def make_dp_optimizer(optimizer: torch.optim.Optimizer, mechanism: StepMechanism) -> DPOptimizer:
    """Opacus' DP optimizer for engines that fill ``p.grad_sample``: it clips, sums, noises and scales.

    Args:
        optimizer: the optimizer to wrap.
        mechanism: the bounds (one if flat, else one per parameter of ``optimizer``), σ, qN and
            the run's noise generator.

    Returns:
        A ``DPOptimizer`` whose ``add_noise`` is ``dp_core.noise.gaussian_noise``'s.
    """
    if mechanism.flat:
        return _DPOptimizer(optimizer, max_grad_norm=mechanism.max_grad_norms[0], **mechanism.optimizer_settings())
    return _DPPerLayerOptimizer(
        optimizer, max_grad_norm=list(mechanism.max_grad_norms), **mechanism.optimizer_settings()
    )


class GradSampleStep(PrivateStep):
    """Engines that fill ``p.grad_sample`` during ``loss.backward()``; the optimizer clips."""

    def backward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            for p in self.optimizer.params:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            return torch.zeros((), device=images.device)
        loss = nn.functional.cross_entropy(self.model(images), labels)
        loss.backward()
        _upcast_grad_samples(self.optimizer.params)
        return upcast(loss.detach())

    def per_sample_norms(self) -> torch.Tensor:
        samples = self.optimizer.grad_samples
        with float32_bookkeeping():
            return torch.stack([upcast(g).flatten(1).norm(dim=1) for g in samples], dim=1).norm(dim=1)

    def per_sample_gradients(self) -> list[torch.Tensor]:
        return list(self.optimizer.grad_samples)

    def with_views(self, *, augmult: int, views: Callable[[torch.Tensor], torch.Tensor]) -> PrivateStep:
        return AveragedViewsStep(self, augmult=augmult, views=views)


class AveragedViewsStep(PrivateStep):
    """A ``GradSampleStep`` whose examples each enter as K views, their gradients averaged before clipping.

    ``backward(images, labels)`` turns the B examples into B·K rows with ``views`` (example-major:
    rows i·K … i·K+K-1 are example i's), runs the engine's backward on them, and replaces every
    ``p.grad_sample`` (B·K, *shape) by its mean over each example's K rows: g_i = (1/K) Σ_k ∇ℓ(x_i^(k)),
    the gradient of the example's loss averaged over its views. The optimizer then clips each g_i
    once, so each example still adds one gradient of norm ≤ C to the sum (De et al. 2022, §3.1).
    Opacus' ``loss_reduction="mean"`` rescales each row's gradient by the rows it saw (B·K), so
    ``p.grad_sample`` holds the per-row ∇ℓ whatever K is.
    """

    def __init__(self, inner: GradSampleStep, *, augmult: int, views: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__(engine=inner.engine, model=inner.model, optimizer=inner.optimizer)
        self.inner = inner
        self.augmult = augmult
        self.views = views

    def backward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            return self.inner.backward(images, labels)
        batch = len(images)
        rows = self.views(images)
        if len(rows) != batch * self.augmult:
            raise ValueError(
                f"Expected {batch} x {self.augmult} views of a batch of {batch}, but got {len(rows)} rows."
            )
        loss = self.inner.backward(rows, labels.repeat_interleave(self.augmult))
        for p in self.optimizer.params:
            p.grad_sample = p.grad_sample.view(batch, self.augmult, *p.shape).mean(dim=1)
        return loss

    def per_sample_norms(self) -> torch.Tensor:
        return self.inner.per_sample_norms()

    def per_sample_gradients(self) -> list[torch.Tensor]:
        return self.inner.per_sample_gradients()


class _Hooks(Engine):
    supports_augmult = True

    def __init__(self, name: str) -> None:
        self.name = name  # "hooks" or "functorch": same module, functorch forced for every layer
        self.supports_channels_last = name == "functorch"

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, mechanism: StepMechanism) -> PrivateStep:
        private_model = wrap_model(model, grad_sample_mode=self.name, batch_first=True, loss_reduction="mean")
        # Poisson sampling assumes each step sees a fresh batch: accumulating per-sample gradients
        # over two forward passes would change the sensitivity, so Opacus forbids it.
        private_model.forbid_grad_accumulation()
        dp_optimizer = make_dp_optimizer(optimizer, mechanism)
        return GradSampleStep(engine=self.name, model=private_model, optimizer=dp_optimizer)


# Layer types whose functional ops torch's ExpandedWeights implements (expanded_weights_impl.HANDLED_FUNCTIONS).
_EW_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Embedding,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


class _ExpandedWeights(Engine):
    name = "ew"
    supports_augmult = True

    def unsupported(self, model: nn.Module, *, clipping: str) -> list[str]:
        reasons = super().unsupported(model, clipping=clipping)
        return reasons + [
            f"{name or '<root>'} ({type(m).__name__}): ExpandedWeights has no rule for this layer"
            for name, m in trainable_modules(model)
            if type(m) not in _EW_LAYERS
        ]

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, mechanism: StepMechanism) -> PrivateStep:
        private_model = wrap_model(model, grad_sample_mode="ew", batch_first=True, loss_reduction="mean")
        dp_optimizer = make_dp_optimizer(optimizer, mechanism)
        return GradSampleStep(engine=self.name, model=private_model, optimizer=dp_optimizer)


class _ClippedSumOptimizer(_AddsGaussianNoise, DPOptimizerFastGradientClipping):
    """Opacus' optimizer for engines that clip in backward: ``p.grad`` arrives as Σ_i clip(g_i).

    It sums chunks of a virtual batch, adds N(0, σ²C²) once per logical batch (``gaussian_noise``)
    and divides by the expected batch size qN. Unlike Opacus' class it refuses to step on gradients
    its engine did not produce: after a plain ``loss.backward()`` it would otherwise add noise to
    *unclipped* gradients, a silent loss of privacy.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._clipped_sum_ready = False

    def mark_clipped_sum_ready(self) -> None:
        self._clipped_sum_ready = True

    def accumulate(self) -> None:
        """Sum the engine's Σ_i clip(g_i) over the chunks of a logical batch into ``p.summed_grad``.

        The engine wrote a fresh ``p.grad``: it is taken over instead of copied (Opacus deep-copies it).
        """
        for p in self.params:
            if p.summed_grad is None:
                p.summed_grad = p.grad
            else:
                p.summed_grad.add_(p.grad)
            p.grad = None

    def pre_step(self, closure=None):  # noqa: ANN001, ANN201 - Opacus' signature
        if not self._clipped_sum_ready:
            raise RuntimeError(
                "Expected p.grad to hold clipped per-sample gradients, but the engine's backward was not "
                "run since the last step; call PrivateStep.backward(images, labels), not loss.backward()."
            )
        self._clipped_sum_ready = False
        return super().pre_step(closure)


class _GhostStep(PrivateStep):
    def __init__(self, *, model: nn.Module, optimizer: _ClippedSumOptimizer) -> None:
        super().__init__(engine="ghost", model=model, optimizer=optimizer)
        self.criterion = DPLossFastGradientClipping(model, optimizer, nn.CrossEntropyLoss(), loss_reduction="mean")
        self._norms: torch.Tensor | None = None

    def backward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            _zero_grads(self.optimizer)
            self._norms = torch.zeros((0,), device=images.device)
            return torch.zeros((), device=images.device)
        device_type = images.device.type
        if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type).itemsize < 4:
            raise RuntimeError(
                "Expected grad_sample_mode='ghost' to run in float32, but got a backward under "
                f"torch.autocast({device_type!r}, dtype={torch.get_autocast_dtype(device_type)}): "
                "ghost's clipped sum would be rounded after summing the examples. Use grad_sample_mode='bk'."
            )
        loss = self.criterion(self.model(images), labels)
        # Opacus: backward for norms, then backward of Σ_i c_i ℓ_i into p.grad. Both passes *are* the
        # bookkeeping here (norms and sums), so TF32 is off for them; the forward may use it.
        with float32_bookkeeping():
            loss.backward()
        self._norms = self.model.per_sample_gradient_norms.detach()
        self.optimizer.mark_clipped_sum_ready()
        return loss.detach()

    def per_sample_norms(self) -> torch.Tensor:
        assert self._norms is not None, "call backward first"
        return self._norms


def _zero_grads(optimizer: _ClippedSumOptimizer) -> None:
    for p in optimizer.params:
        p.grad = torch.zeros_like(p)
    optimizer.mark_clipped_sum_ready()


class _Ghost(Engine):
    name = "ghost"
    supports_per_layer = False
    clips_in_optimizer_step = False

    def unsupported_precision(self, precision: str) -> list[str]:
        if precision != "bf16":
            return []
        return [
            "ghost computes the clipped sum by a second backward through the bf16 graph, whose weight "
            "gradients are rounded to bf16 after summing the examples (one example could then move the "
            "sum by more than C); bk computes the same ghost norms with float32 bookkeeping"
        ]

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, mechanism: StepMechanism) -> PrivateStep:
        private_model = wrap_model(
            model,
            grad_sample_mode="ghost",
            batch_first=True,
            loss_reduction="mean",
            max_grad_norm=mechanism.max_grad_norms[0],
        )
        dp_optimizer = _ClippedSumOptimizer(
            optimizer, max_grad_norm=mechanism.sensitivity, **mechanism.optimizer_settings()
        )
        return _GhostStep(model=private_model, optimizer=dp_optimizer)


# ---------------------------------------------------------------------------------------------- ours


class _BookkeepingStep(PrivateStep):
    """bk's step; with ``views`` (augmult K > 1) each example enters as K rows, which the clipper
    treats as K times the positions of one example (``BookkeepingClipper.backward(views=K)``)."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: _ClippedSumOptimizer,
        clipper: _bookkeeping.BookkeepingClipper,
        augmult: int = 1,
        views: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(engine="bk", model=model, optimizer=optimizer)
        self.clipper = clipper
        self.augmult = augmult
        self.views = views

    def with_views(self, *, augmult: int, views: Callable[[torch.Tensor], torch.Tensor]) -> PrivateStep:
        return _BookkeepingStep(
            model=self.model, optimizer=self.optimizer, clipper=self.clipper, augmult=augmult, views=views
        )

    def backward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            _zero_grads(self.optimizer)
            self.clipper.last_norms = torch.zeros((0,), device=images.device)
            return torch.zeros((), device=images.device)
        if self.views is not None:
            images, labels = self.views(images), labels.repeat_interleave(self.augmult)
        loss = self.clipper.backward(images, labels, views=self.augmult)
        self.optimizer.mark_clipped_sum_ready()
        return loss

    def per_sample_norms(self) -> torch.Tensor:
        assert self.clipper.last_norms is not None, "call backward first"
        return self.clipper.last_norms


class _Bookkeeping(Engine):
    name = "bk"
    clips_in_optimizer_step = False
    supports_augmult = True
    supports_channels_last = True

    def unsupported(self, model: nn.Module, *, clipping: str) -> list[str]:
        return _bookkeeping.unsupported_layers(model)

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, mechanism: StepMechanism) -> PrivateStep:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        norms = mechanism.max_grad_norms
        bounds = dict(zip(params, norms * len(params) if mechanism.flat else norms))
        clipper = _bookkeeping.BookkeepingClipper(model, max_grad_norms=bounds, flat=mechanism.flat)
        # Noised at the sensitivity of Σ_i clip(g_i), as DPPerLayerOptimizer computes it per layer.
        dp_optimizer = _ClippedSumOptimizer(
            optimizer, max_grad_norm=mechanism.sensitivity, **mechanism.optimizer_settings()
        )
        return _BookkeepingStep(model=model, optimizer=dp_optimizer, clipper=clipper)


# ---------------------------------------------------------------------------------------------- registry

#: The engines by ``grad_sample_mode``: ``ENGINES.register(engine.name, engine)`` makes a new one
#: selectable from a config like a built-in (``PrivacyConfig`` validates against this registry).
ENGINES: Registry[Engine] = Registry("grad_sample_mode")

# ``auto`` takes the first of these that supports the model: bk was the fastest correct engine on
# every model of the zoo in ``python -m dp_core.bench``; hooks runs whatever Opacus can.
AUTO_ORDER: tuple[str, ...] = ("bk", "hooks")


def _cannot_average_views(name: str, augmult: int) -> str:
    return (
        f"{name} clips every row of its batch inside Opacus' backward, so it cannot average an "
        f"example's gradient over its augmult={augmult} views before clipping"
    )


def require_augmult(grad_sample_mode: str, augmult: int) -> None:
    """Refuse ``augmult`` > 1 with a named engine that would clip each view as an example of its own."""
    if augmult > 1 and not ENGINES.get(grad_sample_mode).supports_augmult:
        allowed = [name for name in ENGINES if ENGINES.get(name).supports_augmult]
        raise ConfigError(
            f"Expected a grad_sample_mode that averages an example's gradient over its augmult views before "
            f"clipping ({', '.join(allowed)}, or auto), but got grad_sample_mode={grad_sample_mode!r} with "
            f"augmult={augmult}: {_cannot_average_views(grad_sample_mode, augmult)}."
        )


def require_channels_last(grad_sample_mode: str) -> None:
    """Refuse ``channels_last`` with an engine whose per-sample gradients are wrong in that layout."""
    if not ENGINES.get(grad_sample_mode).supports_channels_last:
        allowed = [name for name in ENGINES if ENGINES.get(name).supports_channels_last]
        raise ConfigError(
            f"Expected an engine whose per-sample gradients stay exact in channels_last ({', '.join(allowed)}), "
            f"but got grad_sample_mode={grad_sample_mode!r} with channels_last=True; set grad_sample_mode to one "
            "of those, or channels_last: false."
        )


def choose_engine(
    model: nn.Module,
    *,
    grad_sample_mode: str = "auto",
    clipping: str = "flat",
    plain_backward: bool = False,
    augmult: int = 1,
    precision: str = "fp32",
) -> Engine:
    """The engine ``grad_sample_mode`` names, or for ``auto`` the first of ``AUTO_ORDER`` that fits.

    ``plain_backward`` restricts ``auto`` to engines a plain ``loss.backward(); optimizer.step()``
    loop can drive; ``augmult`` > 1 to engines that average an example's views before clipping
    (``Engine.supports_augmult``). Raises ConfigError when a named engine cannot train ``model``
    with ``clipping`` and ``augmult`` in ``precision`` (a resolved one of ``dp_core.precision``),
    saying why.
    """

    def reasons_against(engine: Engine) -> list[str]:
        reasons = engine.unsupported(model, clipping=clipping) + engine.unsupported_precision(precision)
        if augmult > 1 and not engine.supports_augmult:
            reasons.append(_cannot_average_views(engine.name, augmult))
        return reasons

    if grad_sample_mode == "auto":
        for name in AUTO_ORDER:
            engine = ENGINES.get(name)
            if (engine.clips_in_optimizer_step or not plain_backward) and not reasons_against(engine):
                return engine
        grad_sample_mode = AUTO_ORDER[-1]  # let the last resort explain why it cannot either
    engine = ENGINES.get(grad_sample_mode)
    reasons = reasons_against(engine)
    if reasons:
        raise ConfigError(
            f"Expected grad_sample_mode to support this model, clipping={clipping!r} and precision={precision!r}"
            + (f" with augmult={augmult}" if augmult > 1 else "")
            + f", but got grad_sample_mode={grad_sample_mode!r}:\n  - "
            + "\n  - ".join(reasons)
            + "\nUse grad_sample_mode='auto' to pick an engine that can."
        )
    return engine


for _engine in (_Hooks("hooks"), _Hooks("functorch"), _ExpandedWeights(), _Ghost(), _Bookkeeping()):
    ENGINES.register(_engine.name, _engine)
del _engine
