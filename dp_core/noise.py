"""The Gaussian noise of DP-SGD, written once: every engine and ``dp_core.vectorized`` draw it here.

The privacy guarantee rests on this rule (Abadi et al. 2016, "Deep Learning with Differential
Privacy", Algorithm 1): the sum of per-example gradients, each clipped to norm at most C, changes
by at most C (its L2 sensitivity) when one example is added or removed, so adding N(0, σ²C²)
independently to every coordinate of that sum makes one step the Gaussian mechanism with noise
multiplier σ, the mechanism ``dp_core.accounting`` accounts for.
"""

from __future__ import annotations

import torch

__all__ = ["gaussian_noise"]


def gaussian_noise(
    *, noise_multiplier: float, sensitivity: float, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Noise of std ``noise_multiplier · sensitivity`` for the clipped sum ``like``, in float32.

    Args:
        noise_multiplier: σ, the noise multiplier the accountant is given.
        sensitivity: C, the L2 sensitivity of the clipped sum: the clipping bound (flat), or
            √(Σ_p C_p²) for per-layer bounds C_p.
        like: the clipped sum Σ_i clip_C(g_i) of one parameter; the noise has its shape and device.
        generator: the run's noise generator (seeded by the trial), so that a run's noise is its own
            and a rerun with the same seed adds the same noise.

    Returns:
        A float32 tensor shaped like ``like``: i.i.d. N(0, (σC)²) per coordinate; zeros, drawing
        nothing from ``generator``, when σC = 0 (clipping without noise). Float32 whatever
        ``like``'s dtype, so that the privacy-critical draw is never rounded to half precision.
        The draw is the one call Opacus' ``_generate_noise`` makes, so that every engine and the
        vectorised packs consume a generator identically and add the same noise bit for bit.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> noise = gaussian_noise(noise_multiplier=2.0, sensitivity=0.5, like=torch.zeros(100_000), generator=g)
        >>> noise.dtype, round(noise.std().item(), 2)
        (torch.float32, 1.0)
    """
    std = noise_multiplier * sensitivity
    if std == 0:
        return torch.zeros(like.shape, device=like.device, dtype=torch.float32)
    return torch.normal(mean=0, std=std, size=like.shape, device=like.device, generator=generator, dtype=torch.float32)
