"""Flat DP-SGD clipping for K stacked configurations at once, the step of ``dp_core.vectorized``.

``clipped_sums`` returns Σ_i clip_C(g_i) over each configuration's batch, as Opacus'
``clip_and_accumulate`` does for flat clipping. Models made only of ``nn.Linear`` layers are
clipped without forming any example's gradient (``ghost_clipping``); others materialise
per-example gradients (``per_example_clipping``), in chunks that bound the memory held.
The stacked weights are called through a weightless copy of the model (``functional_call``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

__all__ = [
    "ClipChunk",
    "Clipping",
    "Tensors",
    "clipped_sums",
    "clipping_for",
    "ghost_clipping",
    "logits_function",
    "per_example_clipping",
    "stack_models",
    "stateless_copy",
]

Tensors = dict[str, torch.Tensor]


def stack_models(models: list[nn.Module]) -> tuple[Tensors, Tensors]:
    """Parameters and buffers of ``models`` stacked along a new leading config axis, detached."""
    params, buffers = stack_module_state(models)
    return {n: p.detach() for n, p in params.items()}, {n: b.detach() for n, b in buffers.items()}


def stateless_copy(model: nn.Module) -> nn.Module:
    """A weightless copy of ``model`` (on the meta device) to call with stacked weights."""
    return copy.deepcopy(model).to("meta")


def logits_function(model: nn.Module) -> Callable[[Tensors, Tensors, torch.Tensor], torch.Tensor]:
    return lambda params, buffers, images: functional_call(model, (params, buffers), (images,))


def _clip_factors(norms: torch.Tensor, max_grad_norm: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Opacus' flat factor min(1, C / (‖g_i‖ + 1e-6)), times each example's weight (0: padding).

    Opacus writes C / (norm + 1e-6), which torch evaluates as reciprocal() * C; so do we.
    """
    return ((norms + 1e-6).reciprocal() * max_grad_norm[:, None]).clamp(max=1.0) * weight


# (params K×…, buffers K×…, images K×b×…, labels K×b, weights K×b, max_grad_norm K)
#     -> ({parameter name: Σ_i w_i clip_C(g_i), K×…}, losses K×b)
ClipChunk = Callable[
    [Tensors, Tensors, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[Tensors, torch.Tensor]
]


@dataclasses.dataclass(frozen=True)
class Clipping:
    clip: ClipChunk
    bytes_per_example: int  # memory held per example and configuration; 0 if negligible


def clipping_for(model: nn.Module) -> Clipping:
    """Ghost clipping when every parameter belongs to an ``nn.Linear``, else per-example gradients."""
    in_linear = {
        f"{name}.{p}".lstrip(".")
        for name, module in model.named_modules()
        if type(module) is nn.Linear
        for p, _ in module.named_parameters(recurse=False)
    }
    if {name for name, _ in model.named_parameters()} <= in_linear:
        return Clipping(ghost_clipping(model), bytes_per_example=0)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return Clipping(per_example_clipping(model), bytes_per_example=size)


def per_example_clipping(model: nn.Module) -> ClipChunk:
    """Clip each example's materialised gradient: ``vmap(vmap(grad(loss of one example)))``.

    The gradient of ONE example's loss: train() takes the batch's mean loss, and Opacus
    (loss_reduction="mean") multiplies its per-sample gradients back by the batch size.
    """
    logits_of = logits_function(stateless_copy(model))

    def loss_of_one(params: Tensors, buffers: Tensors, image: torch.Tensor, label: torch.Tensor):
        loss = nn.functional.cross_entropy(logits_of(params, buffers, image.unsqueeze(0)), label.unsqueeze(0))
        return loss, loss.detach()

    gradients = vmap(vmap(grad(loss_of_one, has_aux=True), in_dims=(None, None, 0, 0)), in_dims=(0, 0, 0, 0))

    def clip(
        params: Tensors,
        buffers: Tensors,
        images: torch.Tensor,
        labels: torch.Tensor,
        weight: torch.Tensor,
        max_grad_norm: torch.Tensor,
    ) -> tuple[Tensors, torch.Tensor]:
        grads, losses = gradients(params, buffers, images, labels)
        # As Opacus: the norm of the per-parameter norms is the norm over all parameters.
        norms = torch.stack([g.flatten(start_dim=2).norm(2, dim=-1) for g in grads.values()], dim=-1).norm(2, dim=-1)
        factor = _clip_factors(norms, max_grad_norm, weight)
        return {name: torch.einsum("kb,kb...->k...", factor, g) for name, g in grads.items()}, losses

    return clip


class _ProbedLinear(nn.Linear):
    """``nn.Linear`` that, while ``probe`` is set, records its input and adds a zero probe to its output.

    The gradient of the batch's summed loss with respect to the probe is, row by row, the gradient
    of each example's own loss with respect to the layer's output (examples do not interact).
    """

    probe: tuple[Tensors, Tensors] | None = None  # (probes to add, inputs recorded), by layer name
    layer_name = ""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        output = super().forward(input)
        if self.probe is None:
            return output
        probes, inputs = self.probe
        if input.dim() != 2 or self.layer_name in inputs:
            raise ValueError(
                f"Expected layer {self.layer_name!r} to be called once per example on (batch, "
                f"features), but got input of shape {tuple(input.shape)} or a second call."
            )
        inputs[self.layer_name] = input
        return output + probes[self.layer_name]


def ghost_clipping(model: nn.Module) -> ClipChunk:
    """Flat clipping without forming any example's gradient, for models made of ``nn.Linear`` layers.

    For y = W a + b, example i's gradient is g_i a_iᵀ for W and g_i for b, with g_i = ∂loss_i/∂y_i:
    its squared norm is ‖g_i‖²‖a_i‖² + ‖g_i‖², and Σ_i f_i g_i a_iᵀ is one matrix product
    (Goodfellow 2015, "Efficient per-example gradient computations"; the ghost norm of Li et al.
    2022). The same numbers as materialising, up to rounding, without a K×B×out×in tensor, and
    much less time per step (docs/benchmarks.md).
    """
    stateless = stateless_copy(model)
    layers = {name: m for name, m in stateless.named_modules() if type(m) is nn.Linear}
    for name, layer in layers.items():
        layer.__class__, layer.layer_name = _ProbedLinear, name  # same parameters, same names

    def summed_loss(probes: Tensors, params: Tensors, buffers: Tensors, images: torch.Tensor, labels: torch.Tensor):
        inputs: Tensors = {}
        for layer in layers.values():
            layer.probe = (probes, inputs)
        try:
            logits = functional_call(stateless, (params, buffers), (images,))
        finally:
            for layer in layers.values():
                layer.probe = None
        losses = nn.functional.cross_entropy(logits, labels, reduction="none")
        return losses.sum(), (losses.detach(), inputs)

    output_gradients = vmap(grad(summed_loss, has_aux=True))

    def clip(
        params: Tensors,
        buffers: Tensors,
        images: torch.Tensor,
        labels: torch.Tensor,
        weight: torch.Tensor,
        max_grad_norm: torch.Tensor,
    ) -> tuple[Tensors, torch.Tensor]:
        probes = {name: images.new_zeros(*labels.shape, layer.out_features) for name, layer in layers.items()}
        outputs, (losses, inputs) = output_gradients(probes, params, buffers, images, labels)
        squared = torch.zeros_like(weight)
        for name, layer in layers.items():
            output_squared = outputs[name].square().sum(dim=-1)
            squared += output_squared * inputs[name].square().sum(dim=-1)
            if layer.bias is not None:
                squared += output_squared
        factor = _clip_factors(squared.sqrt(), max_grad_norm, weight)
        sums: Tensors = {}
        for name, layer in layers.items():
            scaled, prefix = outputs[name] * factor[..., None], f"{name}." if name else ""
            sums[prefix + "weight"] = torch.bmm(scaled.transpose(1, 2), inputs[name])
            if layer.bias is not None:
                sums[prefix + "bias"] = scaled.sum(dim=1)
        return {name: sums[name] for name in params}, losses  # in model.parameters() order

    return clip


def clipped_sums(
    clipping: Clipping,
    params: Tensors,
    buffers: Tensors,
    indices: list[torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    max_grad_norm: torch.Tensor,
    chunk: int | None,
    chunk_bytes: int,
) -> tuple[Tensors, torch.Tensor]:
    """Σ_i clip_C(g_i) over each configuration's batch, as Opacus' ``clip_and_accumulate`` (flat).

    Batches differ in size between configurations: they are padded to the largest with example 0
    at weight 0, so padding adds exactly 0 (its gradients are finite). Returns the sums and each
    configuration's summed training loss. Materialised gradients are clipped ``chunk_bytes`` at most at a time.
    """
    device = images.device
    counts = torch.tensor([len(i) for i in indices])
    width = int(counts.max())
    sums, loss = {name: torch.zeros_like(p) for name, p in params.items()}, torch.zeros(len(indices), device=device)
    if width == 0:  # every batch empty: the step releases pure noise
        return sums, loss
    padded = torch.nn.utils.rnn.pad_sequence(list(indices), batch_first=True).to(device)
    weight = (torch.arange(width) < counts[:, None]).to(device=device, dtype=images.dtype)
    step = min(chunk or width, width)  # max_physical_batch_size and chunk_bytes bound the memory held
    if clipping.bytes_per_example > 0:
        step = max(1, min(step, chunk_bytes // (len(indices) * clipping.bytes_per_example)))
    for start in range(0, width, step):
        block, mask = padded[:, start : start + step], weight[:, start : start + step]
        chunk_sums, losses = clipping.clip(params, buffers, images[block], labels[block], mask, max_grad_norm)
        for name, total in chunk_sums.items():
            sums[name] += total
        loss += (losses * mask).sum(dim=1)
    return sums, loss
