"""A user's own code named in a configuration: ``"module:function"`` imported from its code folders.

A configuration may name a function of the user's, not of dpsweep (``model: "mynet:build"``). It
is imported with :mod:`importlib`, never evaluated: the name is split at ``:``, the module imported
by its dotted name and the attribute read from it, as setuptools and Ray read entry points. The
module is looked for on the usual import path, then in the configuration's ``code`` folders (the
space file's folder, in a sweep), which are added to ``sys.path`` only while importing and building,
so that a configuration changes nothing for the rest of the process. They come last: on a Ray
worker the copy that Ray's runtime environment ships (``py_modules``, on the import path) is the
one imported, whether or not the folder also exists there.

Naming a module runs that module's code, as ``python mynet.py`` would: it is trusted as a script is.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dp_core.errors import ConfigError

__all__ = ["import_from_code", "is_reference", "on_import_path", "check_reference"]

# A dotted module name, a colon, a dotted attribute name: "pkg.mynet:build", never an expression.
_REFERENCE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_reference(value: object) -> bool:
    """Whether ``value`` has the form ``"module:function"`` (a zoo name never holds a colon)."""
    return isinstance(value, str) and ":" in value


def check_reference(value: str, *, key: str) -> None:
    """Raise ConfigError unless ``value`` is ``"module:function"`` with Python identifiers."""
    if not _REFERENCE.fullmatch(value):
        raise ConfigError(
            f"Expected {key} to be a zoo name or 'module:function' (a dotted module name, a colon, a function "
            f"name, e.g. 'mynet:build'), but got {key}={value!r}."
        )


@contextlib.contextmanager
def on_import_path(code: Sequence[str]) -> Iterator[None]:
    """``code``'s existing folders at the end of ``sys.path`` for the block, then as it was.

    A folder that does not exist here is skipped: on a Ray worker the code arrives through the
    runtime environment's ``py_modules`` instead (sweeps.driver.user_code).
    """
    folders = [str(Path(folder)) for folder in code if Path(folder).is_dir()]
    added = [folder for folder in folders if folder not in sys.path]
    sys.path.extend(added)
    try:
        yield
    finally:
        for folder in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def import_from_code(reference: str, *, key: str, code: Sequence[str] = ()) -> Callable[..., Any]:
    """The callable that ``reference`` (``"module:function"``) names, its module imported now.

    Args:
        reference: ``"module:function"``; ``module`` may be dotted (a package's module).
        key: the configuration key that named it, for error messages (``"model"``).
        code: folders to import the module from, besides the import path.

    Returns:
        The function (any callable).

    Raises:
        ConfigError: the reference is malformed, the module fails to import (its own error is
            quoted), or it has no such callable.

    Example:
        >>> import_from_code("os.path:join", key="model")("runs", "trial")
        'runs/trial'
        >>> import_from_code("os.path:nothing", key="model")
        Traceback (most recent call last):
        ...
        dp_core.errors.ConfigError: Expected model='os.path:nothing' to name a function of module 'os.path', but ...
    """
    check_reference(reference, key=key)
    module_name, _, attribute = reference.partition(":")
    searched = ", ".join(str(folder) for folder in code) or "none"
    with on_import_path(code):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and (module_name + ".").startswith(error.name + "."):  # it, not an import of it
                raise ConfigError(
                    f"Expected {key}={reference!r} to name a module that can be imported, but no module "
                    f"{module_name!r} was found (code folders searched: {searched}; then the import path). Put "
                    f"{module_name.split('.')[0]}.py beside the space file or list its folder under code:."
                ) from None
            raise _import_failed(key, reference, error) from error
        except Exception as error:  # the module's own code raised: quote it
            raise _import_failed(key, reference, error) from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            where = getattr(module, "__file__", None)
            raise ConfigError(
                f"Expected {key}={reference!r} to name a function of module {module_name!r}, but it has no "
                f"attribute {attribute!r}" + (f" (the module imported is {where})." if where else ".")
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(
            f"Expected {key}={reference!r} to name a function, but got a {type(target).__name__}: {target!r}."
        )
    return target


def _import_failed(key: str, reference: str, error: BaseException) -> ConfigError:
    module = getattr(error, "filename", None) or reference.partition(":")[0]
    return ConfigError(
        f"Expected {key}={reference!r} to name a module that imports, but importing it failed with "
        f"{type(error).__name__}: {error} (in {module})."
    )
