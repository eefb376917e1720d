"""Write ``breast_cancer.csv`` beside this script: scikit-learn's bundled Wisconsin breast cancer table.

``python examples/tabular_csv/make_data.py`` writes 569 rows of 30 numeric features and a ``diagnosis``
column (``malignant`` or ``benign``), as a hospital's export would look; ``breast_cancer.yaml`` sweeps it.
Nothing is downloaded: the table ships with scikit-learn.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write_csv(path: Path = HERE / "breast_cancer.csv") -> Path:
    """Write the table to ``path`` (feature names with ``_`` for spaces) and return the path."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    table = bunch.data.rename(columns=lambda name: name.replace(" ", "_"))
    table["diagnosis"] = bunch.target.map(dict(enumerate(bunch.target_names)))
    table.to_csv(path, index=False)
    return path


if __name__ == "__main__":
    written = write_csv(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "breast_cancer.csv")
    print(f"wrote {written}")
