"""Make this example's image data: scikit-learn's bundled digits as ``digits.npz`` (no download).

The arrays are what an npz dataset of dpsweep holds: ``x_train``, ``y_train``, ``x_test``,
``y_test``, with x of shape N x 1 x 8 x 8 (float32) and y integer labels 0..9. Pixels are divided
by 16, the format's fixed maximum (a public constant, not a statistic of the data).

    python examples/own_model_images/make_data.py            # writes digits.npz beside this file
    python examples/own_model_images/make_data.py OUT.npz    # or there
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main(out: Path) -> None:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # N x 1 x 8 x 8
    labels = digits.target.astype(np.int64)
    split = 1400  # the first 1400 images train (a validation share is held out of them), the rest test
    np.savez(out, x_train=images[:split], y_train=labels[:split], x_test=images[split:], y_test=labels[split:])
    print(f"wrote {out}: {split} training and {len(labels) - split} test images of shape {images.shape[1:]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("digits.npz"))
