"""The sweep's secret root seed: drawn from the operating system, kept owner-only, never released.

DP-SGD's guarantee is about noise the adversary cannot predict. Every random choice of a sweep
(each trial's model init, Poisson batches and Gaussian noise, Optuna's sampler, the trial count
K and the picks of ``private_selection``) derives from one root seed, so whoever knows that seed
can regenerate the noise of every trial and no ε holds against them. A seed written in a space
file is known to everyone who has the file; hence, unless the space sets ``seed:`` (a
reproducible research run, whose ε the launcher then qualifies), the launcher draws the root
from :mod:`secrets` (the OS's entropy pool) for each new sweep.

Resume needs it again (a resumed trial must draw the noise it drew before), so it is kept in the
sweep's folder, in a file readable by its owner only (mode 0600, folder 0700). It is never
logged to MLflow, never written to the frontier files or run names, never printed.

What torch promises and what it does not: a trial's streams are ``torch.Generator`` objects
seeded from the 62-bit trial seed. torch's CPU generator is a Mersenne Twister (mt19937) and
its CUDA generator Philox; both are statistically good and reproducible, neither is a
cryptographically secure generator: seen enough of its raw output, an adversary could in
principle reconstruct an mt19937 state. DP-SGD releases outputs of noise *added to gradients*,
never the raw stream, and no practical attack of that kind on DP-SGD is known; the guarantee
we state assumes an adversary who cannot predict the generator's output, which holds only
while the seed stays secret. A user who needs a cryptographic noise source should use Opacus'
``secure_mode`` (torchcsprng) in their own trainer.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import numpy as np

__all__ = ["SECRET_FILE", "draw", "read", "keep", "derived_seed", "SAMPLER", "SELECTION"]

SECRET_FILE = "sweep-secret.json"

# Purposes of derived seeds, far above any trial number (a trial's seed derives from (root, number)).
SAMPLER = 2**40 + 1  # Optuna's sampler
SELECTION = 2**40 + 2  # private_selection: K, the picks and the draws' seeds


def derived_seed(root: int, *words: int) -> int:
    """A 62-bit seed from (root, words): distinct words give independent streams."""
    state = np.random.SeedSequence([root, *words]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 30) ^ int(state[1])  # < 2**62: the trainer adds 1 and 2 to it


def draw() -> int:
    """A new root seed from the operating system's entropy pool."""
    return secrets.randbits(62)


def read(sweep_dir: Path) -> int | None:
    """The root seed kept in ``sweep_dir`` by an earlier launch of this sweep, or None."""
    path = sweep_dir / SECRET_FILE
    return int(json.loads(path.read_text())["root_seed"]) if path.exists() else None


def keep(sweep_dir: Path, root: int) -> None:
    """Write ``root`` into ``sweep_dir`` (made owner-only), unless it is there already."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(sweep_dir, 0o700)
    path = sweep_dir / SECRET_FILE
    if path.exists():
        return
    # Created owner-only from the start: there is no moment when another user could read it.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"root_seed": root, "note": "the sweep's secret seed: never share this file"}, handle)
        handle.flush()
        os.fsync(handle.fileno())
