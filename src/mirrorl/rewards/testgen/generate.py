"""Run a CYaRon generator, and ground-truth solutions, on many inputs in the code sandbox.

k1.5 sec. 2.3.5 generates 50 test inputs per problem with a CYaRon generator. A generator is
untrusted (a model wrote it), so it runs in the code sandbox like any program: one sandbox start
for all its runs, each run a "test" whose stdin is a seed and whose stdout is one input. The
solutions run the same way, one start each, on every input (none skipped after a crash); the
sandbox judges them against a placeholder output, and only their stdout is used.

CYaRon inside the sandbox: its python3 runs with -I (no site-packages, PYTHONPATH ignored) in a
root holding only /usr, and our venv may lie under /work, which the sandbox covers with its
tmpfs; so neither the path nor a bind of site-packages reaches it. Instead the source text of
CYaRon and of its pure-Python dependency xeger (about 115 KB, read from the installed packages;
nothing is vendored) travels inside the program and is imported from memory (bootstrap.py). It
works the same under bubblewrap and under backend "none", and exposes no host path. The cost: every
run compiles CYaRon again, about 60 ms (3 s for 50 inputs on our machine). CYaRon's optional
colorful dependency is left out (CYaRon falls back to plain text without it).

Does not: check inputs against the statement's constraints (a solution that crashes on an invalid
input only costs that test its agreement), or make a generator's output reproducible when it
draws from its own random source (xeger, behind String.random_regular, does).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mirrorl.rewards.sandbox import Isolation, Limits, Program, RunResult, TestCase, TestResult, Verdict, run_program
from mirrorl.rewards.testgen import bootstrap

CYARON_PACKAGES = ("cyaron", "xeger")  # CYaRon and its one required, pure-Python dependency
BOOTSTRAP_SOURCE = Path(bootstrap.__file__).read_text()


@functools.cache
def cyaron_modules() -> dict[str, tuple[bool, str]]:
    """{module name: (is package, source)} of the installed CYaRon and xeger, their tests left out."""
    modules = {}
    for package in CYARON_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"test generation needs the {package} package: pip install 'mirrorl[testgen]'")
        root = Path(spec.submodule_search_locations[0])
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            if "tests" in parts:
                continue
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (is_package, path.read_text(encoding="utf-8"))
    return modules


def generator_program(source: str) -> Program:
    """The sandbox program that runs a generator: the bootstrap, CYaRon's modules, the generator.

    The module sources sit on a line of their own: a traceback quotes the line of `main(...)`,
    which would otherwise hold all of CYaRon and overflow the stderr limit.
    """
    return Program("python", f"{BOOTSTRAP_SOURCE}\nMODULES = {cyaron_modules()!r}\nmain(MODULES, {source!r})\n")


def run_on_inputs(program: Program, inputs: Sequence[str], limits: Limits, isolation: Isolation) -> RunResult:
    """Run `program` on every input in one sandbox start, once more after a sandbox error.

    The expected outputs are a placeholder: read each test's output with `output_of`.
    """
    tests = [TestCase(text, "") for text in inputs]
    limits = limits.model_copy(update={"stop_on_failure": False})
    result = run_program(program, tests, limits, isolation=isolation)
    if result.verdict is Verdict.SANDBOX_ERROR:
        result = run_program(program, tests, limits, isolation=isolation)
    return result


def output_of(test: TestResult) -> str | None:
    """A run's stdout when it exited normally (either verdict against the placeholder), else None."""
    return test.stdout if test.verdict in (Verdict.OK, Verdict.WRONG_ANSWER) else None


@dataclass(frozen=True)
class GeneratedInputs:
    """What the runs of one generator gave."""

    inputs: list[str]  # distinct inputs, in seed order
    num_failed: int  # runs that crashed, timed out, overflowed or printed only whitespace
    num_duplicates: int  # runs that printed an input an earlier run printed
    detail: str = ""  # why the first failed run failed
    sandbox_error: str = ""  # set when the sandbox itself failed twice: nothing was generated


def run_generator(source: str, seeds: Sequence[int], limits: Limits, isolation: Isolation) -> GeneratedInputs:
    """Run a CYaRon generator once per seed (the seed is its stdin) and collect the distinct inputs."""
    result = run_on_inputs(generator_program(source), [f"{seed}\n" for seed in seeds], limits, isolation)
    if result.verdict is Verdict.SANDBOX_ERROR:
        return GeneratedInputs([], 0, 0, sandbox_error=result.detail)
    inputs: dict[str, None] = {}  # an ordered set
    num_failed = num_duplicates = 0
    detail = ""
    for test in result.tests:
        text = output_of(test)
        if text is None or not text.strip():
            num_failed += 1
            detail = detail or (test.detail if text is None else "printed nothing")
        elif text in inputs:
            num_duplicates += 1
        else:
            inputs[text] = None
    return GeneratedInputs(list(inputs), num_failed, num_duplicates, detail)
