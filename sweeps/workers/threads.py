"""How many threads torch uses in a worker: the CPUs Ray reserved for it, never more."""

from __future__ import annotations

import os

import torch

__all__ = ["use_reserved_cpus"]


def use_reserved_cpus() -> None:
    """Set torch's thread count to ``OMP_NUM_THREADS``, which Ray sets to a worker's reserved CPUs.

    Torch reads the variable only when it starts its thread pool, and a reused worker may have
    started it for another trial; setting it again keeps concurrent trials off each other's
    cores. Unset or 0 (outside Ray): torch's own default.
    """
    cpus = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if cpus > 0:
        torch.set_num_threads(cpus)
