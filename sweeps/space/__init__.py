"""Search spaces: YAML sweep definitions, validated before anything runs.

``load``: finding a space by name or path, and the file format with what each key means.
``parse``: a file's raw values checked and built into a space. ``model``: the validated space as
frozen dataclasses, and the rules between its settings. ``checks``: the checks the two share.
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
    rebuild_space,
)

# A pickled SearchSpace names its rebuild function; Tune state saved before the package was split
# (a --resume) still looks for it here.
_rebuild_space = rebuild_space

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
    "checks",
    "load",
    "model",
    "parse",
]
