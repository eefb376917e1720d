"""The layering the folder tree promises.

dp_core never imports the orchestration stack. sweeps is layered (pyproject's import-linter
contracts): launch > driver > workers | tracking > results > privacy > planning > protocol >
space; only driver and workers import Ray, only tracking imports MLflow. No module of either
package is part of an import cycle, lazy (function-level) and TYPE_CHECKING imports included,
and no module imports another module's private names.
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    command = shutil.which("lint-imports")
    assert command is not None, "import-linter is a test dependency: pip install -e '.[test]'"
    done = subprocess.run([command], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" in done.stdout and "0 broken" in done.stdout
    for contract in (
        "sweeps is layered",
        "Only sweeps.driver and sweeps.workers import Ray",
        "Only sweeps.tracking imports MLflow",
        "Planning, privacy and results are pure",
    ):
        assert contract in done.stdout, f"the contract {contract!r} is gone from pyproject.toml"


def _import_cycles(graph: Any, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: [d for d in graph.find_modules_directly_imported_by(m) if d in modules] for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_cycles_in_dp_core_or_sweeps() -> None:
    import grimp  # import-linter's graph builder; it sees imports inside functions too

    # An import only a type checker reads is still an edge here: a cycle through TYPE_CHECKING is
    # one a reader must follow both ways, and one annotation made real away from a run-time cycle.
    graph = grimp.build_graph("dp_core", "sweeps", exclude_type_checking_imports=False, cache_dir=None)
    modules = set(graph.modules)
    assert _import_cycles(graph, modules) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    class Graph:
        imports = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}

        def find_modules_directly_imported_by(self, module: str) -> list[str]:
            return self.imports[module]

    assert _import_cycles(Graph(), {"a", "b", "c", "d"}) == [["a", "b", "c"]]


def test_dp_core_runs_without_ray_optuna_mlflow() -> None:
    """Importing and planning with dp_core loads none of the orchestration libraries."""
    code = (
        "import sys; import dp_core.train, dp_core.privacy_plan, dp_core.cli; "
        "bad = [m for m in ('ray', 'optuna', 'mlflow', 'sweeps') if m in sys.modules]; "
        "print(bad); raise SystemExit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_trial_workers_start_light() -> None:
    """Ray starts a trial's actor by importing its trainable's module: that must not pull in
    torch (seconds; see sweeps.workers.trainable), and the workers' training path never needs MLflow."""
    code = (
        "import sys; import sweeps.workers.trainable; "
        "heavy = [m for m in ('torch', 'opacus', 'mlflow', 'optuna') if m in sys.modules]; "
        "import sweeps.workers.trial, sweeps.workers.pack; "
        "heavy += [m for m in ('mlflow', 'optuna') if m in sys.modules]; "
        "print(heavy); raise SystemExit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_of(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _is_module(dotted: str, root: Path) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_name_imports(root: Path, packages: tuple[str, ...]) -> list[str]:
    """Every place a module of ``packages`` reaches another module's private name.

    ``from a.b import _x`` and ``b._x`` (``b`` imported as a module of ours) count, relative imports
    included. Importing a private *module* (``from dp_core import _prv``) does not: a package's
    private module is shared by its siblings; its underscore names are not.
    """
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name, is_package = _module_of(path, root)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            modules: dict[str, str] = {}  # local name -> our module it is bound to
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    source = (
                        (node.module or "")
                        if node.level == 0
                        else ".".join([*base[: len(base) - node.level + 1], *filter(None, [node.module])])
                    )
                    if source.split(".")[0] not in packages:
                        continue
                    for alias in node.names:
                        target = f"{source}.{alias.name}"
                        if _is_module(target, root):
                            modules[alias.asname or alias.name] = target
                        elif _is_private(alias.name) and source != name:
                            found.append(f"{path.relative_to(root)}:{node.lineno}: from {source} import {alias.name}")
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.split(".")[0] in packages:
                            local = alias.asname or alias.name.split(".")[0]
                            modules[local] = alias.name if alias.asname else local
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                    continue
                chain, value = [], node.value
                while isinstance(value, ast.Attribute):
                    chain.append(value.attr)
                    value = value.value
                if isinstance(value, ast.Name) and value.id in modules:
                    target = ".".join([modules[value.id], *reversed(chain)])
                    if _is_module(target, root) and target != name:
                        found.append(f"{path.relative_to(root)}:{node.lineno}: {target}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_name_imports(ROOT, ("dp_core", "sweeps")) == []


def test_the_private_name_finder_finds_them(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_helpers.py").write_text("def _hidden(): pass\ndef shown(): pass\n")
    (package / "a.py").write_text("def _own(): pass\n_own()\n")
    (package / "b.py").write_text(
        "from pkg._helpers import _hidden, shown\nfrom . import a\nfrom pkg import _helpers\n"
        "a._own()\n_helpers.shown()\n"
    )
    assert private_name_imports(tmp_path, ("pkg",)) == [
        "pkg/b.py:1: from pkg._helpers import _hidden",
        "pkg/b.py:4: pkg.a._own",
    ]
