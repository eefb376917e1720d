"""The DP-SGD step on Opacus: per-sample gradients, clipping, Gaussian noise, Poisson batches.

We build Opacus' pieces directly instead of calling ``PrivacyEngine.make_private`` because the
engine derives the sampling rate as ``1 / len(data_loader)``, which differs from the
``batch_size / N`` users ask for whenever N is not a multiple of the batch (e.g. 1437 digits
with batches of 64: 1/23 vs 64/1437). Here the sampling rate the sampler uses is exactly the
one the accountant is given.

``make_private_step`` wraps a model and optimizer with a per-sample gradient engine
(``dp_core.engines``) and returns a ``PrivateStep``: ``loss = step.backward(images, labels)`` then
``step.optimizer.step()`` is the whole DP-SGD step whichever engine computes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NotRequired, TypedDict, Unpack

import torch
from opacus.optimizers import DPOptimizer
from torch import nn

from dp_core.engines import Engine, PrivateStep, StepMechanism, choose_engine
from dp_core.errors import ConfigError

__all__ = [
    "PlainStep",
    "PrivateStep",
    "StepSettings",
    "make_private",
    "make_private_step",
    "per_layer_norms",
    "poisson_batches",
]


def per_layer_norms(max_grad_norm: float, model: nn.Module) -> list[float]:
    """Split a total bound C over n parameter tensors as C/√n each, so the whole gradient's
    norm is still at most C (the seed CIFAR-10 script's rule)."""
    n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    return [max_grad_norm / math.sqrt(n_tensors)] * n_tensors


def make_private_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    clipping: str = "flat",
    grad_sample_mode: str = "auto",
    noise_generator: torch.Generator | None = None,
    augmult: int = 1,
    views: Callable[[torch.Tensor], torch.Tensor] | None = None,
    precision: str = "fp32",
) -> PrivateStep:
    """Wrap ``model`` and ``optimizer`` for DP-SGD with a per-sample gradient engine.

    Each step: every example's gradient g_i is clipped to norm ≤ C (flat: over all parameters;
    per_layer: C/√n per tensor), the clipped gradients are summed, N(0, σ²C²) is added to every
    coordinate (``dp_core.noise.gaussian_noise``), and the result is divided by the *expected*
    batch size qN (not the realised Poisson batch size, which would depend on the data and break
    the sensitivity bound). Every engine computes this same quantity; they differ in speed and
    memory.

    Train with ``loss = step.backward(images, labels); step.optimizer.step()``: engines that clip
    inside backward (ghost, bk) need their own backward, and their optimizer refuses to step
    on gradients from a plain ``loss.backward()``.

    Args:
        model: the model to train; it must be DP-compatible (``dp_core.models.make_dp_compatible``).
        optimizer: the optimizer of ``model``'s parameters, which the DP optimizer wraps.
        noise_multiplier: σ; the noise std is σ·C. 0 clips without noise (ε = ∞).
        max_grad_norm: C, the bound on each example's gradient norm.
        expected_batch_size: qN, the sampling rate times the training-set size.
        clipping: ``"flat"`` (one bound over all parameters) or ``"per_layer"`` (C/√n per tensor).
        grad_sample_mode: a registered engine (``dp_core.engines.ENGINES``), or ``"auto"``: the first
            of ``dp_core.engines.AUTO_ORDER`` that supports the model and clipping.
        noise_generator: the run's noise generator (seed it for a reproducible run).
        augmult: K, the views of each example (augmentation multiplicity; 1 is off): g_i is the
            gradient of the example's loss averaged over its K views, clipped once
            (``PrivateStep.with_views``); only engines with ``supports_augmult``.
        views: with ``augmult`` > 1, maps (B, ...) images to their (B·K, ...) views, example-major
            (``dp_core.augment.augmented_views`` with the run's generator).
        precision: the resolved precision (``fp32``, ``bf16``, ``tf32``; ``dp_core.precision``) the
            caller runs ``backward`` in (``Precision.training()``): ``auto`` then skips engines that
            cannot keep DP exact in it, and a named one that cannot is refused.

    Returns:
        A ``PrivateStep``: ``.backward(images, labels)``, ``.optimizer`` (the DP optimizer),
        ``.model`` (possibly wrapped), ``.engine`` (the engine's name).

    Raises:
        ConfigError: ``grad_sample_mode`` is not registered, or the engine cannot train this model
            with this clipping or augmult (the message says why).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> step = make_private_step(model, torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0,
        ...                          max_grad_norm=1.0, expected_batch_size=8, noise_generator=torch.Generator())
        >>> step.engine
        'bk'
        >>> images, labels = torch.randn(8, 1, 2, 2), torch.randint(0, 2, (8,))
        >>> loss = step.backward(images, labels)
        >>> bool((step.per_sample_norms() > 0).all())
        True
        >>> step.optimizer.step()
        >>> step.optimizer.zero_grad(set_to_none=True)
    """
    if (augmult > 1) != (views is not None):
        raise ValueError(f"Expected views exactly when augmult > 1, but got augmult={augmult}, views={views!r}.")
    engine = choose_engine(
        model, grad_sample_mode=grad_sample_mode, clipping=clipping, augmult=augmult, precision=precision
    )
    step = _prepare(
        engine,
        model,
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        clipping=clipping,
        noise_generator=noise_generator,
    )
    return step if views is None else step.with_views(augmult=augmult, views=views)


class StepSettings(TypedDict):
    """The keyword arguments ``make_private`` passes on, as ``make_private_step`` documents them."""

    noise_multiplier: float
    max_grad_norm: float
    expected_batch_size: float
    clipping: NotRequired[str]
    noise_generator: NotRequired[torch.Generator | None]


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    grad_sample_mode: str = "hooks",
    **settings: Unpack[StepSettings],
) -> tuple[nn.Module, DPOptimizer]:
    """``make_private_step`` as Opacus' ``(model, optimizer)`` pair, for a plain ``loss.backward()`` loop.

    Only engines that clip in ``optimizer.step()`` fit that loop (hooks, functorch, ew; ``auto``
    picks the fastest of them); ghost and bk need ``make_private_step(...).backward``.
    """
    engine = choose_engine(
        model, grad_sample_mode=grad_sample_mode, clipping=settings.get("clipping", "flat"), plain_backward=True
    )
    if not engine.clips_in_optimizer_step:
        raise ConfigError(
            f"Expected an engine that clips in optimizer.step(), but got grad_sample_mode={engine.name!r}, which "
            "clips during its own backward; use make_private_step(...).backward(images, labels) instead."
        )
    step = _prepare(engine, model, optimizer, **settings)
    return step.model, step.optimizer


def _prepare(
    engine: Engine, model: nn.Module, optimizer: torch.optim.Optimizer, **settings: Unpack[StepSettings]
) -> PrivateStep:
    flat = settings.get("clipping", "flat") == "flat"
    max_grad_norm = settings["max_grad_norm"]
    mechanism = StepMechanism(
        noise_multiplier=settings["noise_multiplier"],
        max_grad_norms=(max_grad_norm,) if flat else tuple(per_layer_norms(max_grad_norm, model)),
        flat=flat,
        expected_batch_size=settings["expected_batch_size"],
        noise_generator=settings.get("noise_generator"),
    )
    return engine.prepare(model, optimizer, mechanism)


class PlainStep:
    """The non-private reference step, with ``PrivateStep``'s interface: mean cross-entropy, one backward.

    With ``views`` (augmult K > 1) each example enters as its K views: the mean loss over the B·K
    rows is the mean over examples of each one's loss averaged over its views, as under DP.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        augmult: int = 1,
        views: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.engine = "none"
        self.model = model
        self.optimizer = optimizer
        self.augmult = augmult
        self.views = views

    def backward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.views is not None:
            images, labels = self.views(images), labels.repeat_interleave(self.augmult)
        loss = nn.functional.cross_entropy(self.model(images), labels)
        loss.backward()
        return loss.detach()


def poisson_batches(
    *,
    num_examples: int,
    sample_rate: float,
    steps: int,
    generator: torch.Generator,
    max_physical_batch_size: int | None = None,
    optimizer: DPOptimizer | None = None,
) -> Iterator[tuple[torch.Tensor, bool]]:
    """Yield ``(indices, ends_logical_batch)`` for ``steps`` Poisson-sampled logical batches.

    Every example joins each batch independently with probability ``sample_rate`` (the sampled
    Gaussian mechanism the accountant assumes). Batches may be empty; they still count as a step
    and still get noise. With ``max_physical_batch_size`` a logical batch is split into chunks
    and ``optimizer`` is told to clip-and-accumulate until the last chunk (virtual batches).

    The mask is drawn on ``generator``'s device, and the indices stay there: a trainer on a GPU
    passes a CUDA generator and indexes its on-device data with them, with no host copy. The one
    host synchronisation a step has is ``nonzero``'s (the batch's size, which the step's shapes
    and the split into chunks need). Batches are not padded to a fixed shape: see
    docs/trainer.md, "Sampling on the device". On the CPU the draw is Opacus'
    ``UniformWithReplacementSampler``'s (``rand(N) < q``), so a seed gives the same batches as it did.
    """
    for _ in range(steps):
        mask = torch.rand(num_examples, generator=generator, device=generator.device) < sample_rate
        batch = mask.nonzero().flatten()
        if max_physical_batch_size is None or optimizer is None or len(batch) <= max_physical_batch_size:
            if optimizer is not None:
                optimizer.signal_skip_step(do_skip=False)
            yield batch, True
            continue
        chunks = torch.tensor_split(batch, math.ceil(len(batch) / max_physical_batch_size))
        for chunk in chunks[:-1]:
            # The optimizer clips and accumulates these chunks without updating (virtual batch),
            # as Opacus' BatchMemoryManager does.
            optimizer.signal_skip_step(do_skip=True)
            yield chunk, False
        optimizer.signal_skip_step(do_skip=False)
        yield chunks[-1], True
