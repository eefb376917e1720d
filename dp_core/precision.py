"""The arithmetic a training run computes in: ``precision: fp32 | bf16 | tf32 | auto``.

Only the model's forward and backward passes are lowered. Under ``bf16`` they run under
``torch.autocast`` (parameters stay float32: autocast lowers each op's compute dtype, not the
weights); under ``tf32`` float32 matmuls and convolutions may use TF32 tensor cores on CUDA. The
DP bookkeeping never is: per-example gradient norms, clipping factors, clipped sums, noise and the
parameter update are float32 in every engine (:func:`float32_bookkeeping`, :func:`upcast`).
Why: a per-example norm rounded *down* (bf16 keeps 8 significant bits, so by up to 0.4 %) lets that
example into the sum above the bound C, and a sum rounded to bf16 after adding the examples can
move by far more than C when one example changes; either breaks the sensitivity that the noise
σ·C is calibrated to. What each example contributes may be computed from bf16 activations; its
norm is then measured, and its clipped copy summed, in float32 on exactly those values.

``auto`` is bf16 on a CUDA device with native bf16 (compute capability ≥ 8.0: A100, H100, ...)
and fp32 elsewhere (a CPU, or an older GPU). ``tf32`` is refused on a CPU: TF32 is a CUDA tensor-core
format, so a CPU run would silently be fp32 while its results said tf32.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch

from dp_core.errors import ConfigError

__all__ = ["PRECISIONS", "Precision", "float32_bookkeeping", "resolve_precision", "upcast"]

PRECISIONS = ("auto", "fp32", "bf16", "tf32")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Precision:
    """A resolved precision (``fp32``, ``bf16`` or ``tf32``) on one device type (``cpu``, ``cuda``)."""

    name: str
    device_type: str

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Run a training step's forward and backward in this precision; settings are restored after.

        bf16: ``torch.autocast(device_type, dtype=torch.bfloat16)``. tf32: TF32 allowed for CUDA
        matmuls and cuDNN convolutions. fp32: nothing changes. The engines keep their bookkeeping
        float32 inside it (:func:`float32_bookkeeping`).
        """
        if self.name == "bf16":
            with torch.autocast(self.device_type, dtype=torch.bfloat16):
                yield
        elif self.name == "tf32":
            with _tf32(True):
                yield
        else:
            yield


@contextlib.contextmanager
def _tf32(allowed: bool) -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@contextlib.contextmanager
def float32_bookkeeping() -> Iterator[None]:
    """Compute per-example norms, clipping factors and clipped sums in true float32 inside this block.

    Autocast is switched off (on CPU and CUDA) and TF32 is disallowed, whatever the caller set, and
    both are restored after: TF32 rounds a matmul's inputs to 10 significant bits, which would make
    the clipped sum of an example differ from the copy whose norm was measured.
    """
    with torch.autocast("cpu", enabled=False), _tf32(False):
        if torch.cuda.is_available():
            with torch.autocast("cuda", enabled=False):
                yield
        else:
            yield


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is a lower-precision float (bf16, fp16), else unchanged (fp32, fp64)."""
    if tensor.is_floating_point() and torch.finfo(tensor.dtype).bits < 32:
        return tensor.float()
    return tensor


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """The precision a run on ``device`` computes in: ``auto`` resolved, the others checked against the device.

    Raises:
        ConfigError: ``tf32`` on a device without TF32 (a CPU, a GPU older than compute capability
            8.0), or ``bf16`` on a GPU without native bf16; the message names the setting to use.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"Expected precision to be one of {', '.join(PRECISIONS)}, but got precision={precision!r}.")
    native = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    if precision == "auto":
        return Precision(name="bf16" if native else "fp32", device_type=device.type)
    if precision == "tf32" and not native:
        raise ConfigError(
            "Expected precision=tf32 on a CUDA device of compute capability >= 8.0 (TF32 is a tensor-core "
            f"format), but got precision='tf32' on device {_device_name(device)}, where it would silently be "
            "fp32; use precision=fp32 or auto."
        )
    if precision == "bf16" and device.type == "cuda" and not native:
        raise ConfigError(
            "Expected precision=bf16 on a CUDA device with native bf16 (compute capability >= 8.0), but got "
            f"precision='bf16' on {_device_name(device)}, which only emulates it; use precision=fp32 or auto."
        )
    return Precision(name=precision, device_type=device.type)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
