"""The import structure of the package: no import cycle between its subpackages, and every
subpackage and module imports on its own.

The cycle check reads the source with `ast` (nothing is imported), so it sees every import:
top-level, nested in functions, under `if TYPE_CHECKING:`, absolute or relative. The import checks
run in fresh interpreters, so a module that only works after another module was imported fails.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = "mirrorl"
# The layered subpackages: imports between them must form a DAG.
LAYERED = ("config", "data", "rewards", "train", "rollout", "algo", "eval")
# Top-level modules and packages that must each import alone (any others found are checked too).
EXPECTED_TOP_LEVEL = (*LAYERED, "types", "recipes", "cli")

Edge = tuple[str, str]  # (importing module, imported module), full dotted names


def package_root() -> Path:
    """The source directory of the installed package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.submodule_search_locations, f"{PACKAGE} is not installed as a package"
    return Path(next(iter(spec.submodule_search_locations)))


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every module under root by dotted name; a package is named by its __init__.py."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([package, *parts])] = path
    return modules


def resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` names, resolving a relative X."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that this module imports anywhere in its source.

    `from a import b` counts as importing `a.b` when that is a module, otherwise `a`.
    """
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(module, is_package, node)
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    return {name for name in found if name in known}


def top_level(module: str) -> str | None:
    """The top-level subpackage or module a module belongs to: `mirrorl.rewards.sandbox.run` -> "rewards"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE else None


def subpackage_graph(edges: Iterable[Edge], nodes: Iterable[str]) -> dict[Edge, list[Edge]]:
    """The edges between distinct subpackages among `nodes`, each with the module imports behind it."""
    nodes = set(nodes)
    graph: dict[Edge, list[Edge]] = defaultdict(list)
    for importer, imported in edges:
        source, target = top_level(importer), top_level(imported)
        if source in nodes and target in nodes and source != target:
            graph[source, target].append((importer, imported))
    return {edge: sorted(examples) for edge, examples in graph.items()}


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle in a directed graph as a closed path ([a, b, a]), or None if the graph is acyclic.

    >>> find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    True
    >>> find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]})
    ['a', 'b', 'c', 'a']
    """
    successors = {node: sorted(set(targets)) for node, targets in graph.items()}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        path.append(node)
        for target in successors.get(node, ()):
            if cycle := visit(target, path):
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(successors):
        if cycle := visit(start, []):
            return cycle
    return None


def describe_cycle(cycle: list[str], examples: Mapping[Edge, list[Edge]]) -> str:
    """The cycle and, for each of its edges, one module import that makes it."""
    lines = [f"import cycle between subpackages: {' -> '.join(cycle)}"]
    for source, target in zip(cycle, cycle[1:]):
        (importer, imported), *others = examples[source, target]
        more = f" (and {len(others)} more)" if others else ""
        lines.append(f"  {source} -> {target}: {importer} -> {imported}{more}")
    return "\n".join(lines)


def package_imports() -> list[Edge]:
    """Every (module, imported module) pair inside the package, read from the source."""
    modules = module_files(package_root())
    known = set(modules)
    return [(module, imported) for module, path in modules.items()
            for imported in imported_modules(module, path, known)]


# The cycle finder and the import reader on hand-made input.


def test_find_cycle_on_acyclic_graphs():
    assert find_cycle({}) is None
    assert find_cycle({"a": []}) is None
    assert find_cycle({"a": ["b", "c"], "b": ["c", "d"], "c": ["d"], "d": []}) is None  # diamond, shared tails
    assert find_cycle({"a": ["b"]}) is None  # a target with no entry of its own


def test_find_cycle_finds_cycles():
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    assert find_cycle({"config": ["rewards"], "rewards": ["config"]}) == ["config", "rewards", "config"]
    cycle = find_cycle({"s": ["t", "z"], "t": ["u"], "u": ["v", "t"], "v": [], "z": []})
    assert cycle == ["t", "u", "t"]  # the path into the cycle (s) is not part of it


def test_describe_cycle_names_one_import_per_edge():
    examples = {("a", "b"): [("p.a.m", "p.b.n"), ("p.a", "p.b")], ("b", "a"): [("p.b.n", "p.a")]}
    assert describe_cycle(["a", "b", "a"], examples) == (
        "import cycle between subpackages: a -> b -> a\n  a -> b: p.a.m -> p.b.n (and 1 more)\n  b -> a: p.b.n -> p.a"
    )


def test_imports_are_read_everywhere_and_resolved(tmp_path: Path):
    root = tmp_path / "pkg"
    for name in ("__init__", "a/__init__", "a/x", "a/y", "b/__init__", "b/z", "c"):
        (root / name).with_suffix(".py").parent.mkdir(parents=True, exist_ok=True)
        (root / name).with_suffix(".py").write_text("")
    (root / "a/x.py").write_text(
        "from typing import TYPE_CHECKING\nimport os\nfrom . import y\nfrom ..b import z\n"
        "if TYPE_CHECKING:\n    from pkg.c import Thing\n"
        "def f():\n    import pkg.b.z as zz\n    from pkg import missing\n"
    )
    (root / "a/__init__.py").write_text("from .x import f\n")
    modules = module_files(root, "pkg")
    assert set(modules) == {"pkg", "pkg.a", "pkg.a.x", "pkg.a.y", "pkg.b", "pkg.b.z", "pkg.c"}
    known = set(modules)
    assert imported_modules("pkg.a.x", modules["pkg.a.x"], known) == {"pkg.a.y", "pkg.b.z", "pkg.c", "pkg"}
    assert imported_modules("pkg.a", modules["pkg.a"], known) == {"pkg.a.x"}


def test_subpackage_graph_keeps_only_edges_between_distinct_given_subpackages():
    edges = [("mirrorl.config.base", "mirrorl.rewards.math_reward"), ("mirrorl.rewards", "mirrorl.rewards.batch"),
             ("mirrorl.train.rl", "mirrorl.types"), ("mirrorl.cli", "mirrorl.train"), ("mirrorl.config", "mirrorl")]
    assert subpackage_graph(edges, LAYERED) == {("config", "rewards"): [edges[0]]}


# The package itself.


def test_no_import_cycle_between_subpackages():
    edges = package_imports()
    found = {top_level(module) for module in module_files(package_root())}
    assert set(LAYERED) <= found, f"subpackages not found in {package_root()}: {set(LAYERED) - found}"
    examples = subpackage_graph(edges, LAYERED)
    graph: dict[str, list[str]] = defaultdict(list)
    for source, target in examples:
        graph[source].append(target)
    cycle = find_cycle(graph)
    assert cycle is None, describe_cycle(cycle, examples)


def top_level_names() -> list[str]:
    """Every top-level module and subpackage of the package, found from its source."""
    names = {name for name in map(top_level, module_files(package_root())) if name}
    missing = set(EXPECTED_TOP_LEVEL) - names
    assert not missing, f"expected top-level modules not found: {missing}"
    return sorted(names)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


IMPORT_ALL = """
import importlib, pkgutil, sys, traceback
package = importlib.import_module({name!r})
failures = []
def failed(name):
    traceback.print_exc()
    print(f"--- importing {{name}} failed (above)", file=sys.stderr)
    failures.append(name)
for info in pkgutil.walk_packages(getattr(package, "__path__", []), package.__name__ + ".", onerror=failed):
    try:
        importlib.import_module(info.name)
    except Exception:
        failed(info.name)
sys.exit(f"modules that failed to import: {{failures}}" if failures else 0)
"""


@pytest.mark.parametrize("name", top_level_names())
def test_subpackage_imports_alone(name: str):
    result = run_python(f"import {PACKAGE}.{name}")
    assert result.returncode == 0, f"`import {PACKAGE}.{name}` in a fresh interpreter failed:\n{result.stderr}"


@pytest.mark.parametrize("name", top_level_names())
def test_every_module_of_subpackage_imports(name: str):
    result = run_python(IMPORT_ALL.format(name=f"{PACKAGE}.{name}"))
    assert result.returncode == 0, f"importing every module of {PACKAGE}.{name} failed:\n{result.stderr}"
