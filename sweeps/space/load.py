"""Finding and loading search spaces: YAML sweep definitions, validated before anything runs.

A search space is a small YAML file (shipped ones live in the ``search_spaces`` package)::

    name: digits_quick              # optional: the file stem; a different name is warned about, the stem wins
    description: one line shown by --list
    fixed: {dataset: digits, model: digits_cnn, epochs: 15, delta: 1.0e-5}
    axes:
      max_grad_norm: [0.5, 1.0, 2.0]                     # a grid list
      lr: {low: 0.2, high: 2.0, log: true, num: 3}       # a range
    epsilon_budget: 8.0
    search: grid                    # grid | optuna
    trials: 24                      # optuna: required; grid: optional cap on the points run
    objective: single               # single | multi
    pruner: asha                    # asha | none
    resources: {cpus: 1, gpus: 0}   # per trial: gpus at most 1 (a fraction shares a GPU), see below
    checkpoint_every_minutes: 10    # how often a trial saves its checkpoint while training (and at its end)
    seed: 0                         # optional: a public root seed (a reproducible research run, see below)
    sweep_epsilon_budget: 40.0      # optional, optuna: an RDP filter on the whole sweep (sweeps.privacy.adaptive)
    kind: train                     # train | federated (FedAvg over DP-SGD clients)
    vectorize: auto                 # auto | off | N: configurations trained at once per unit of work
    private_selection: {distribution: poisson, mean: 10}   # optional, grid only: see below
    confirm: {top: 3, seeds: 3}     # the confirmation stage (default); confirm: off skips it

Files are data: they are read with ``yaml.safe_load`` only, nothing named in them is imported
or evaluated. Every check runs in :func:`load_space`, so a typo fails in milliseconds with a
message naming the file, the key, the bad value and what is allowed, instead of after an hour
of trials. The training keys under ``fixed`` and ``axes`` are dp_core's flat ``TrainConfig``
keys, and each trial configuration is validated by ``TrainConfig.from_dict`` itself. With
``kind: federated`` they may also be ``dp_core.federated``'s keys (clients, rounds, local_epochs,
partition, dirichlet_alpha), and each trial is validated by ``dp_core.federated.split_flat``.

``private_selection`` (``distribution: poisson | truncated_negative_binomial``, ``mean``, and for
the latter an optional shape ``eta``, default 1) makes a grid sweep draw its number of trials K
from that distribution and run K grid points drawn uniformly with replacement, so that releasing
the best model has Papernot–Steinke's guarantee (:mod:`sweeps.privacy.selection`). The theorem needs
i.i.d. runs of one mechanism, so it is refused with search: optuna (adaptive), pruner: asha
(runs depend on each other), a trials cap, a seed axis and kind: federated.

A trial trains on one device, so ``resources.gpus`` above 1 is refused (except with ``kind:
federated``, whose clients split the trial's GPUs): Ray Tune runs trials side by side instead,
one per GPU with ``gpus: 1``, or several per GPU with a fraction such as ``gpus: 0.25``.

Each trial trains with its own seed (model init, Poisson sampling, noise), drawn from the sweep's
root seed and the trial's number (:meth:`SearchSpace.trial_seed`), unless the space sets one itself
(``fixed.seed`` or a ``seed`` axis). Trials that shared one noise stream would not be
independent runs, and the sweep's privacy statement composes its trials as independent
mechanisms (:mod:`sweeps.privacy.selection`). Without ``seed:`` the root seed is a secret the launcher
draws from the operating system's entropy (:mod:`sweeps.privacy.sweep_secret`): DP needs noise that an
adversary cannot regenerate, and anyone who has the space file knows a seed written in it.
``seed:`` (and ``fixed.seed`` or a ``seed`` axis) makes a reproducible research run whose ε holds
only against someone who does not know that seed; :attr:`SearchSpace.public_seed` says so.

Every trial trains on the training split less a validation split (``fixed.validation_fraction``,
default :data:`DEFAULT_VALIDATION_FRACTION`; the sampling rate and ε count only what is trained
on), and reports validation accuracy only: pruning, Optuna and the frontier decide on it, and no
search trial evaluates the test split. ``confirm`` then retrains the ``top`` configurations of
each ε bucket with ``seeds`` fresh seeds each (:mod:`sweeps.results.confirm`); each bucket's is chosen by
mean validation accuracy and reported with its test accuracy, mean ± std over those seeds.

``vectorize`` packs trials that share a model, data and steps into one unit of work trained by
``dp_core.vectorized.train_vectorized`` (up to N configurations at once, a unit holding several
rounds of N that take the places of pruned or finished ones; each still reported, pruned and
logged as its own trial, with the results it would have alone). ``auto`` trains up to
:data:`sweeps.planning.packing.AUTO_PACK_SIZE` at once for the models where that measured faster; ``off``
(or 1) runs one trial per unit.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

import search_spaces
from dp_core.errors import ConfigError
from sweeps.space.model import SearchSpace
from sweeps.space.parse import parse_space

__all__ = ["SPACES_DIR", "list_spaces", "load_space"]

SPACES_DIR: Path = Path(search_spaces.__file__).parent


def list_spaces() -> list[SearchSpace]:
    """Every shipped space (``*.yaml`` in :data:`SPACES_DIR`), validated, sorted by name."""
    return sorted((load_space(str(path)) for path in SPACES_DIR.glob("*.yaml")), key=lambda s: s.name)


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load and validate a shipped space by name (``"digits_quick"``) or a ``.yaml`` file by path.

    Args:
        name_or_path: a shipped space's name (a file of :data:`SPACES_DIR` without ``.yaml``), or a
            path: a :class:`~pathlib.Path`, or a string with a slash or ending in ``.yaml``/``.yml``.

    Returns:
        The validated :class:`SearchSpace`, its ``source`` an absolute path.

    Raises:
        ConfigError: no such space or file ("did you mean" for a misspelt name), malformed YAML,
            or a value no sweep can run; the message names the file, the key, the bad value and
            what is allowed.

    Example:
        >>> space = load_space("digits_quick")
        >>> space.name, space.search, space.grid_size, space.epsilon_budget
        ('digits_quick', 'grid', 24, 8.0)
        >>> load_space("digits_quik")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        dp_core...ConfigError: Unknown search space 'digits_quik'. Did you mean 'digits_quick'? Known spaces: ...
    """
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith((".yaml", ".yml"))
    if looks_like_path:
        path = Path(text).expanduser().absolute()  # Ray workers may run elsewhere: keep no cwd-relative path
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ConfigError(f"Search space file {path} {what}. Give a path to a .yaml file or a shipped name.")
    else:
        path = SPACES_DIR / f"{text}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
            close = difflib.get_close_matches(text, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"Unknown search space {text!r}.{hint} Known spaces: {', '.join(known) or '(none)'} "
                f"(in {SPACES_DIR}); or give a path to a .yaml file."
            )
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Could not read search space file {path}: {error}.") from None
    return parse_space(_safe_load(source, path), path)


def _safe_load(source: str, path: Path) -> Any:
    try:
        return yaml.safe_load(source)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        detail = getattr(error, "problem", None) or str(error)
        context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context:
            at = (
                f" at line {context_mark.line + 1}, column {context_mark.column + 1}"
                if context_mark is not None
                else ""
            )
            detail = f"{detail} ({context}{at})"
        note = ""
        if isinstance(error, yaml.constructor.ConstructorError):
            note = (
                " Search spaces are plain data: tags such as !!python/... are refused and nothing "
                "named in a file is ever imported or run."
            )
        raise ConfigError(f"Malformed YAML in {where}: {detail}.{note}") from None
