"""Search spaces: YAML sweep definitions, validated before anything runs.

The file format and what each key means: :mod:`sweeps.space.load`. The validated space, as frozen
dataclasses: :mod:`sweeps.space.model`. The checks of a file's values: :mod:`sweeps.space.parse`.
"""

from sweeps.space.load import SPACES_DIR, list_spaces, load_space
from sweeps.space.model import (
    DEFAULT_VALIDATION_FRACTION,
    KINDS,
    OBJECTIVES,
    PRUNERS,
    SEARCH_MODES,
    SELECTION_DISTRIBUTIONS,
    Axis,
    Confirmation,
    PrivateSelection,
    Range,
    SearchSpace,
)

# A pickled SearchSpace names its rebuild function; Tune state saved before the split (a --resume)
# still looks for it here.
from sweeps.space.model import _rebuild_space as _rebuild_space

__all__ = [
    "DEFAULT_VALIDATION_FRACTION",
    "KINDS",
    "OBJECTIVES",
    "PRUNERS",
    "SEARCH_MODES",
    "SELECTION_DISTRIBUTIONS",
    "SPACES_DIR",
    "Axis",
    "Confirmation",
    "PrivateSelection",
    "Range",
    "SearchSpace",
    "list_spaces",
    "load_space",
]
