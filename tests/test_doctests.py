"""Every `>>>` example in the package's docstrings runs and prints what it shows.

Modules are picked by scanning their source for '>>>', so collection imports nothing; each test
imports one module and runs its examples with `doctest`.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
from pathlib import Path

import pytest

PACKAGE = "mirrorl"


def package_root() -> Path:
    """The source directory of the installed package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.submodule_search_locations, f"{PACKAGE} is not installed as a package"
    return Path(next(iter(spec.submodule_search_locations)))


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def modules_with_examples() -> list[str]:
    """Modules whose source contains '>>>', by dotted name."""
    root = package_root()
    return sorted(module_name(root, path) for path in root.rglob("*.py") if ">>>" in path.read_text())


MODULES = modules_with_examples()


def test_some_module_has_examples():
    assert MODULES, f"no '>>>' example found under {package_root()}: the doctest run below checks nothing"


@pytest.mark.parametrize("name", MODULES)
def test_examples_pass(name: str):
    module = importlib.import_module(name)
    tests = [test for test in doctest.DocTestFinder().find(module) if test.examples]
    assert tests, f"{name} contains '>>>' but doctest finds no example in its docstrings (nested or not a docstring?)"
    runner = doctest.DocTestRunner()
    report: list[str] = []
    results = [runner.run(test, out=report.append) for test in tests]
    failed, attempted = sum(result.failed for result in results), sum(result.attempted for result in results)
    assert attempted > 0
    assert failed == 0, f"{failed} of {attempted} examples in {name} failed:\n" + "".join(report)
