"""Book-keeping (BK) clipping: Σ_i clip(g_i) from one forward and one output-only backward pass.

Bu, Wang, Zha and Karypis, "Differentially Private Optimization on Large Model at Small Cost"
(ICML 2023), Algorithm 1. For every trainable layer y = f(a; W) the per-example gradient is a
function of the layer's input a_i and of its output gradient b_i = ∂ℓ_i/∂y_i only, so

1. one forward pass records each layer's input a (hooks live only for that pass);
2. one backward pass of Σ_i ℓ_i is taken to the layer *outputs* (``torch.autograd.grad``), which
   yields every b and skips the parameter gradients a normal backward computes;
3. per layer, the squared per-example norms ‖g_i‖² come either from the ghost norm
   ‖Σ_t b_it a_itᵀ‖²_F = ⟨A_i A_iᵀ, B_i B_iᵀ⟩ (Goodfellow 2015; Li et al. 2022), cheap when the
   layer has few positions T, or from the instantiated per-example gradients g_i, whichever
   costs less ("mixed" clipping, Bu et al.);
4. the clip factors c_i = min(1, C / (‖g_i‖ + 1e-6)) (Opacus' formula) weight the sum
   Σ_i c_i g_i: a contraction of the instantiated g_i, or for ghost layers the layer's weight
   gradient with b_i rescaled by c_i. There is no second backward pass.

With augmentation multiplicity (``views`` K > 1) the batch holds K rows per example, example-major,
and the loss is Σ_i (1/K) Σ_k ℓ_ik: example i's gradient is the sum of its rows' gradients, so its
K views act as K times the positions T of a ghost norm (a linear layer's rows are regrouped as
(B, K·T, d)), and an instantiated g_i is the sum of its K rows' gradients.

Instantiating g_i costs about one weight gradient, which BK then no longer needs, so a layer
costs little more than in non-private training; a ghost layer pays its Gram matrices on top.
Conv2d (groups=1) picks one of four ways by a cost rule measured on CPU (``_conv_strategy``):
ghost norms from im2col patches or from per-phase channel Grams (no im2col), instantiation by
im2col + bmm or by one grouped weight-gradient convolution with groups = B. Linear layers use
the free ghost norm ‖a_i‖·‖b_i‖ for 2-D inputs. Every other layer type with an Opacus grad
sampler (GroupNorm, LayerNorm, Embedding, ...) instantiates g_i with that sampler.
A weight-standardised conv (``dp_core._ws_conv.WSConv2d``) instantiates g_i w.r.t. its standardised
weight and pulls them back through the standardisation to its weight and gain.

Under mixed precision (``dp_core.precision``) the forward and the output-only backward may run in
bf16; steps 3 and 4 do not. Each layer's a and b are upcast to float32 (bf16 values are exact in
float32) and the norms, factors and Σ_i c_i g_i are computed from them in float32 with autocast and
TF32 off: a norm rounded down would let an example above C through, and a sum rounded to bf16
after adding every example could move by more than C.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from opacus.grad_sample.grad_sample_module import GradSampleModule
from opacus.layers.dp_rnn import DPGRU, DPLSTM, DPRNN, RNNLinear
from torch import nn

from dp_core._ws_conv import WSConv2d, standardize_weight
from dp_core.precision import float32_bookkeeping, upcast

__all__ = ["BookkeepingClipper", "unsupported_layers"]

# Per parameter: (‖g_i‖² for every example i, and c ↦ Σ_i c_i g_i for per-example factors c).
_Sum = Callable[[torch.Tensor], torch.Tensor]
_Rule = dict[nn.Parameter, tuple[torch.Tensor, _Sum]]

_EPS = 1e-6  # Opacus' clip-factor guard: c = C / (‖g‖ + 1e-6)


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


# The sums are built by small factories so that each closure keeps alive only what it needs
# (the per-example gradients of an instantiated layer, not also its input and output gradient).
def _contract(per_example: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, _Sum]:
    """Instantiated g_i, flattened to (B, n): their squared norms and Σ_i c_i g_i as one matvec."""
    return per_example.square().sum(1), lambda c: (c.to(per_example.dtype) @ per_example).view(shape)


def _summed_views(per_row: torch.Tensor, views: int) -> torch.Tensor:
    """Per-row gradients (B·K, ...) -> per-example (B, n): each example's K consecutive rows summed."""
    flat = per_row.flatten(1)
    return flat if views == 1 else flat.view(-1, views, flat.shape[1]).sum(1)


def _weighted_linear_grad(a: torch.Tensor, b: torch.Tensor) -> _Sum:
    """Σ_i c_i b_iᵀ a_i for a (B, T, d_in), b (B, T, d_out): the weight gradient with b rescaled."""
    return lambda c: (b * c[:, None, None]).flatten(0, 1).T @ a.flatten(0, 1)


def _weighted_conv_grad(a: torch.Tensor, b: torch.Tensor, shape: torch.Size, conv_args: dict, views: int = 1) -> _Sum:
    """Σ_i c_i g_i as one weight gradient with each row's b rescaled by its example's c_i."""
    return lambda c: torch.nn.grad.conv2d_weight(
        a, shape, b * c.repeat_interleave(views).view(-1, 1, 1, 1), **conv_args
    )


def _ghost_is_cheaper(positions: int, weights: int) -> bool:
    """Bu et al.'s rule: a T×T Gram per example costs ~2T² against p·d for the gradient itself."""
    return 2 * positions * positions < weights


def _linear(module: nn.Module, inputs: tuple[torch.Tensor, ...], grad_output: torch.Tensor, views: int = 1) -> _Rule:
    batch = grad_output.shape[0] // views  # an example's K views are K·T positions of one example
    a = inputs[0].reshape(batch, -1, inputs[0].shape[-1]).to(grad_output.dtype)  # (B, K·T, d_in)
    b = grad_output.reshape(batch, -1, grad_output.shape[-1])  # (B, K·T, d_out)
    weight, bias = module.weight, module.bias
    rules: _Rule = {}
    if weight.requires_grad:
        positions = a.shape[1]
        if positions == 1:  # ‖b aᵀ‖ = ‖a‖·‖b‖: the ghost norm is free
            norms = a.square().sum((1, 2)) * b.square().sum((1, 2))
            rules[weight] = norms, _weighted_linear_grad(a, b)
        elif _ghost_is_cheaper(positions, weight.numel()):
            norms = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(b, b.transpose(1, 2))).sum((1, 2))
            rules[weight] = norms, _weighted_linear_grad(a, b)
        else:
            rules[weight] = _contract(torch.bmm(b.transpose(1, 2), a).flatten(1), weight.shape)
    if bias is not None and bias.requires_grad:
        rules[bias] = _contract(b.sum(1), bias.shape)
    return rules


def _unfold2d(a: torch.Tensor, module: nn.Conv2d) -> torch.Tensor:
    """im2col as one strided copy: (B, C, H, W) -> (B, C·kh·kw, T), like ``F.unfold`` but faster on CPU."""
    ph, pw = module.padding  # type: ignore[misc]  # string paddings go to Opacus' sampler instead
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    a = a.contiguous()
    batch, channels, height, width = a.shape
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    out_h = (height - dh * (kh - 1) - 1) // sh + 1
    out_w = (width - dw * (kw - 1) - 1) // sw + 1
    s_b, s_c, s_h, s_w = a.stride()
    patches = a.as_strided((batch, channels, kh, kw, out_h, out_w), (s_b, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw))
    return patches.reshape(batch, channels * kh * kw, out_h * out_w)


@dataclasses.dataclass(frozen=True)
class _ConvGeometry:
    """A conv's input seen as stride-1 "phase" images of width ``wq`` (the padded input split into
    stride_h·stride_w polyphase components), so that tap (u, v) of output position q = i·wq + j
    reads flat index q + offset of one phase: patches never need to be copied out (no im2col)."""

    taps: tuple[tuple[tuple[int, int], int], ...]  # per (u, v): (phase, flat offset)
    phase_pixels: int  # hq·wq
    phases: int  # distinct phases the taps read
    wq: int
    out_h: int
    out_w: int
    wide: int  # L = (out_h - 1)·wq + out_w "wide" output positions (those with j >= out_w are padding)


def _geometry(module: nn.Conv2d, height: int, width: int) -> _ConvGeometry:
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = module.kernel_size, module.stride, module.dilation, module.padding
    hp, wp = height + 2 * ph, width + 2 * pw  # type: ignore[operator]
    out_h, out_w = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    hq, wq = -(-hp // sh), -(-wp // sw)
    taps = tuple(
        (((dh * u) % sh, (dw * v) % sw), ((dh * u) // sh) * wq + (dw * v) // sw) for u in range(kh) for v in range(kw)
    )
    return _ConvGeometry(
        taps=taps,
        phase_pixels=hq * wq,
        phases=len({phase for phase, _ in taps}),
        wq=wq,
        out_h=out_h,
        out_w=out_w,
        wide=(out_h - 1) * wq + out_w,
    )


def _ghost_norm_wide(a: torch.Tensor, b: torch.Tensor, module: nn.Conv2d, geo: _ConvGeometry) -> torch.Tensor:
    """‖g_i‖² = ⟨A_iᵀA_i, B_iᵀB_i⟩ with the patch Gram A_iᵀA_i summed from per-phase channel Grams
    (Σ over taps of a shifted block), which costs C·(hq·wq)² instead of C·k²·T² and no im2col."""
    batch, channels = a.shape[:2]
    (ph, pw), (sh, sw) = module.padding, module.stride
    hp, wp = a.shape[2] + 2 * ph, a.shape[3] + 2 * pw  # type: ignore[operator]
    hq = geo.phase_pixels // geo.wq
    padded = F.pad(a, (pw, pw + geo.wq * sw - wp, ph, ph + hq * sh - hp))  # type: ignore[operator]
    grid = padded.view(batch, channels, hq, sh, geo.wq, sw)
    wide, gram_a = geo.wide, None
    for phase in dict.fromkeys(p for p, _ in geo.taps):
        image = grid[:, :, :, phase[0], :, phase[1]].reshape(batch, channels, geo.phase_pixels)
        channel_gram = torch.bmm(image.transpose(1, 2), image)
        for tap_phase, offset in geo.taps:
            if tap_phase == phase:
                block = channel_gram[:, offset : offset + wide, offset : offset + wide]
                gram_a = block.clone() if gram_a is None else gram_a.add_(block)
    b_wide = F.pad(b, (0, geo.wq - geo.out_w)).reshape(batch, b.shape[1], -1)[:, :, :wide]
    return (gram_a * torch.bmm(b_wide.transpose(1, 2), b_wide)).sum((1, 2))


def _conv_strategy(module: nn.Conv2d, channels: int, geo: _ConvGeometry, positions: int) -> str:
    """Which way computes this layer's norms and clipped sum fastest (measured on CPU, see bench).

    The ghost norm costs O·L² + min(C·phases·(hq·wq)², P·T²) per example and still needs the weight
    gradient (O·P·T) for the clipped sum; instantiating g_i costs about one weight gradient and
    makes the clipped sum a cheap contraction. Ghost wins when its norm costs under half a weight
    gradient (few positions, many channels). Instantiation goes through im2col for thin inputs
    (≤ 4 channels) and 1×1 kernels, else through a grouped weight-gradient convolution (groups = B).
    """
    patch = channels * module.kernel_size[0] * module.kernel_size[1]
    out_channels = module.out_channels
    gram_flops = min(channels * geo.phases * geo.phase_pixels**2, patch * positions**2)
    if out_channels * geo.wide**2 + gram_flops < 0.5 * out_channels * patch * positions:
        return "ghost_wide" if channels * geo.phases * geo.phase_pixels**2 < patch * positions**2 else "ghost_unfold"
    if channels <= 4 or module.kernel_size == (1, 1):
        return "instantiate_unfold"
    return "instantiate_grouped"


def _conv2d(module: nn.Module, inputs: tuple[torch.Tensor, ...], grad_output: torch.Tensor, views: int = 1) -> _Rule:
    a = inputs[0].to(grad_output.dtype).contiguous()
    batch, channels, height, width = a.shape  # batch: rows, K per example
    b = grad_output.contiguous()
    weight, bias = module.weight, module.bias
    conv_args = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation}
    rules: _Rule = {}
    if weight.requires_grad:
        geo = _geometry(module, height, width)
        positions = b.shape[2] * b.shape[3]
        strategy = _conv_strategy(module, channels, geo, positions)
        if views > 1 and strategy.startswith("ghost"):
            # An example's Gram spans its K views' positions: only the im2col form regroups them.
            ghost = _ghost_is_cheaper(views * positions, weight.numel())
            strategy = "ghost_unfold" if ghost else "instantiate_unfold"
        if strategy == "ghost_wide":
            rules[weight] = _ghost_norm_wide(a, b, module, geo), _weighted_conv_grad(a, b, weight.shape, conv_args)
        elif strategy == "ghost_unfold":
            patches, b_flat = _positions_of_views(_unfold2d(a, module), views), _positions_of_views(b.flatten(2), views)
            norms = (torch.bmm(patches.transpose(1, 2), patches) * torch.bmm(b_flat.transpose(1, 2), b_flat)).sum(
                (1, 2)
            )
            rules[weight] = norms, _weighted_conv_grad(a, b, weight.shape, conv_args, views)
        elif strategy == "instantiate_unfold":
            # (B, P, T) @ (B, T, O): contracting the long T axis last was the faster order on CPU
            # An example's views as its positions: the contraction sums them, never holding K per-view gradients.
            patches, b_flat = _positions_of_views(_unfold2d(a, module), views), _positions_of_views(b.flatten(2), views)
            per_example = torch.bmm(patches, b_flat.transpose(1, 2))
            rules[weight] = _contract(per_example.transpose(1, 2).flatten(1), weight.shape)
        else:  # instantiate_grouped
            rules[weight] = _contract(_summed_views(_conv_weight_grads(a, b, module), views), weight.shape)
    if bias is not None and bias.requires_grad:
        rules[bias] = _contract(_summed_views(b.sum((2, 3)), views), bias.shape)
    return rules


def _conv_weight_grads(a: torch.Tensor, b: torch.Tensor, module: nn.Conv2d) -> torch.Tensor:
    """(rows, *weight.shape): every row is one group of a grouped convolution's weight gradient."""
    batch, channels, height, width = a.shape
    out_channels = b.shape[1]
    per_example = torch.nn.grad.conv2d_weight(
        a.view(1, batch * channels, height, width),
        (batch * out_channels, *module.weight.shape[1:]),
        b.view(1, batch * out_channels, *b.shape[2:]),
        groups=batch,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
    )
    return per_example.view(batch, *module.weight.shape)


def _ws_conv2d(module: nn.Module, inputs: tuple[torch.Tensor, ...], grad_output: torch.Tensor, views: int = 1) -> _Rule:
    """A weight-standardised conv: g_i w.r.t. the standardised weight Ŵ = s(W, gain), instantiated, then
    pulled back through s (the same linear map Jᵀ for every example, a vmapped vector-Jacobian product).
    No ghost norm: ‖Jᵀ G_i‖ is not a function of the Gram matrices of a_i and b_i alone. With views, an
    example's K rows are summed before the pull-back (Jᵀ is linear)."""
    a, b = inputs[0].to(grad_output.dtype).contiguous(), grad_output.contiguous()
    weight, gain, bias = module.weight, module.gain, module.bias
    per_example_hat = _summed_views(_conv_weight_grads(a, b, module), views).view(-1, *weight.shape)
    _, pull_back = torch.func.vjp(standardize_weight, weight.detach(), gain.detach())
    weight_grads, gain_grads = torch.func.vmap(pull_back)(per_example_hat)
    rules: _Rule = {}
    for param, grads in ((weight, weight_grads), (gain, gain_grads)):
        if param.requires_grad:
            rules[param] = _contract(grads.flatten(1), param.shape)
    if bias is not None and bias.requires_grad:
        rules[bias] = _contract(_summed_views(b.sum((2, 3)), views), bias.shape)
    return rules


def _positions_of_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """(B·K, n, T) -> (B, n, K·T): an example's K views side by side as positions of one example."""
    if views == 1:
        return x
    rows, n, positions = x.shape
    return x.view(rows // views, views, n, positions).transpose(1, 2).reshape(rows // views, n, views * positions)


def _instantiated(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], grad_output: torch.Tensor, views: int = 1
) -> _Rule:
    """Any layer with an Opacus grad sampler (GroupNorm, LayerNorm, Embedding, ...): instantiated g_i."""
    sampler = GradSampleModule.GRAD_SAMPLERS[type(module)]
    per_row = sampler(module, list(inputs), grad_output)
    return {p: _contract(_summed_views(g, views), p.shape) for p, g in per_row.items() if p.requires_grad}


_Handler = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor, int], _Rule]


def _handler(module: nn.Module) -> _Handler | None:
    if type(module) is nn.Linear:
        return _linear
    if type(module) is WSConv2d and module.groups == 1 and not isinstance(module.padding, str):
        return _ws_conv2d if module.padding_mode == "zeros" else None
    if (
        type(module) is nn.Conv2d
        and module.groups == 1
        and not isinstance(module.padding, str)
        and module.padding_mode == "zeros"
    ):
        return _conv2d
    if type(module) in GradSampleModule.GRAD_SAMPLERS and type(module) not in (DPRNN, DPLSTM, DPGRU, RNNLinear):
        return _instantiated
    return None


def unsupported_layers(model: nn.Module) -> list[str]:
    """One line per layer this engine cannot clip; empty when the whole model is supported."""
    problems = []
    owners: dict[int, str] = {}
    for name, module in model.named_modules():
        params = _trainable(module)
        where = f"{name or '<root>'} ({type(module).__name__})"
        if params and _handler(module) is None:
            problems.append(f"{where}: no per-example gradient rule for this layer type")
        if params and any(True for _ in module.buffers(recurse=False)):
            problems.append(f"{where}: trainable layer with buffers (e.g. running statistics)")
        for p in params:
            if id(p) in owners:
                problems.append(f"{where}: shares a parameter with {owners[id(p)]} (weight tying)")
            owners[id(p)] = where
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            problems.append(f"{where}: BatchNorm mixes the examples of a batch")
    return problems


class BookkeepingClipper:
    """Writes Σ_i clip(g_i) into ``p.grad`` for a model's trainable parameters (Bu et al., 2023).

    ``max_grad_norms`` maps every trainable parameter to its bound: with ``flat`` the first value
    bounds the whole per-example gradient (all bounds must then be equal); otherwise each
    parameter tensor is clipped to its own bound (per-layer clipping, as ``DPPerLayerOptimizer``).
    """

    def __init__(self, model: nn.Module, *, max_grad_norms: Mapping[nn.Parameter, float], flat: bool) -> None:
        problems = unsupported_layers(model)
        if problems:
            raise ValueError("bk cannot clip this model:\n  - " + "\n  - ".join(problems))
        self.model = model
        self.flat = flat
        self.max_grad_norms = dict(max_grad_norms)
        self.layers = [m for m in model.modules() if _trainable(m)]
        self.params = [p for m in self.layers for p in _trainable(m)]
        missing = [p for p in self.params if p not in self.max_grad_norms]
        if missing:
            raise ValueError(f"Expected a clipping bound for every trainable parameter, but {len(missing)} have none.")
        if flat and len(set(self.max_grad_norms.values())) > 1:
            raise ValueError(
                f"Expected one bound for flat clipping, but got {sorted(set(self.max_grad_norms.values()))}."
            )
        self.last_norms: torch.Tensor | None = None

    @contextlib.contextmanager
    def _recording(self) -> Iterator[dict[nn.Module, tuple[tuple[torch.Tensor, ...], torch.Tensor, int]]]:
        """Record (detached inputs, output, output version) of every trainable layer for one forward."""
        records: dict[nn.Module, tuple[tuple[torch.Tensor, ...], torch.Tensor, int]] = {}

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if module in records:
                raise RuntimeError(
                    f"{type(module).__name__} ran twice in one forward pass; bk needs each trainable layer "
                    "called once per example batch (use grad_sample_mode='hooks')."
                )
            records[module] = (tuple(t.detach() for t in inputs), output, output._version)

        handles = [m.register_forward_hook(hook) for m in self.layers]
        try:
            yield records
        finally:
            for handle in handles:
                handle.remove()

    def backward(self, images: torch.Tensor, labels: torch.Tensor, *, views: int = 1) -> torch.Tensor:
        """Set ``p.grad = Σ_i clip(g_i)`` over the batch (a sum, not a mean); return the mean loss.

        With ``views`` K > 1 the batch holds K rows per example, example-major (rows i·K … i·K+K-1
        are example i's views), and g_i is the gradient of the mean loss over them.
        """
        if len(images) % views:
            raise ValueError(f"Expected a multiple of views={views} rows, but got {len(images)}.")
        with self._recording() as records:
            logits = self.model(images)
            losses = F.cross_entropy(logits, labels, reduction="none")
        layers = [m for m, (_, out, _) in records.items() if out.requires_grad]
        for module in layers:
            _, output, version = records[module]
            if output._version != version:
                # The gradient we would take is that of the modified tensor, not of the layer's output.
                raise RuntimeError(
                    f"The output of {type(module).__name__} was modified in place after the layer ran; bk "
                    "needs out-of-place operations (dp_core.models.make_dp_compatible removes them)."
                )
        # Gradients w.r.t. the layer outputs only: autograd skips every parameter gradient.
        # Σ_i (1/K) Σ_k ℓ_ik: example i's loss is the mean over its views. In the run's precision
        # (bf16, TF32): each b_i is a function of example i alone.
        total_loss = losses.sum() if views == 1 else losses.sum() / views
        grad_outputs = list(torch.autograd.grad(total_loss, [records[m][1] for m in layers], allow_unused=True))
        with float32_bookkeeping():  # norms, factors and the clipped sum: see the module docstring
            return self._clip_and_sum(records, layers, grad_outputs, losses, views)

    def _clip_and_sum(
        self,
        records: dict[nn.Module, tuple[tuple[torch.Tensor, ...], torch.Tensor, int]],
        layers: list[nn.Module],
        grad_outputs: list[torch.Tensor | None],
        losses: torch.Tensor,
        views: int,
    ) -> torch.Tensor:
        """Set ``p.grad = Σ_i clip(g_i)`` from each layer's recorded input and output gradient."""
        rules: _Rule = {}
        for index, module in enumerate(layers):
            inputs = records.pop(module)[0]
            grad_output, grad_outputs[index] = grad_outputs[index], None  # free each as soon as it is used
            if grad_output is not None:  # None: the layer does not reach the loss, its gradients are zero
                inputs, grad_output = tuple(upcast(t) for t in inputs), upcast(grad_output)
                rules.update(_handler(module)(module, inputs, grad_output, views))  # type: ignore[misc]
            del inputs, grad_output

        zeros = torch.zeros(len(losses) // views, device=losses.device)  # float32, whatever the loss's dtype
        norms_sq = {p: rules[p][0] if p in rules else zeros for p in self.params}
        total = torch.stack(list(norms_sq.values())).sum(0).sqrt() if norms_sq else zeros
        self.last_norms = total.detach()
        if self.flat:
            factor = (next(iter(self.max_grad_norms.values()), 0.0) / (total + _EPS)).clamp(max=1.0)
            factors = dict.fromkeys(self.params, factor)
        else:
            factors = {p: (self.max_grad_norms[p] / (n.sqrt() + _EPS)).clamp(max=1.0) for p, n in norms_sq.items()}
        for p in self.params:  # a fresh tensor per parameter: the optimizer takes ownership of it
            rule = rules.pop(p, None)
            p.grad = rule[1](factors[p]).view_as(p).to(p.dtype) if rule is not None else torch.zeros_like(p)
        return upcast(losses.detach()).mean()
