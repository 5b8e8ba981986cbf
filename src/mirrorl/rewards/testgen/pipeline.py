"""`mirrorl gen-tests`: problems with ground-truth solutions in, problems with voted tests out.

For each problem (k1.5 sec. 2.3.5): choose `num_solutions` of its solutions at random, run its
generator with `num_inputs` seeds, run the chosen solutions on every distinct input, keep a test
when at least `min_agree` solutions agree on its output (vote.py), and keep the problem when it
has at least `min_tests` tests and at least `min_passing` solutions pass all of them. Defaults are
the report's numbers (50, 10, 7, 9; and 40 tests, from its funnel "463 with >= 40 valid tests").

Rows in (JSON lines): {"id", "statement" (or "prompt"), "solutions": [{"language", "source"}],
optional "generator" (source), "float_tolerance", "meta"}. Languages python (run as Python 3)
and cpp, by the fence names the code reward knows (python3, c++, ...); others are not run.
The generator of a problem: its row's, else the --generator file (or <dir>/<id>.py), else one
the --model writes. Rows out: the kept rows, with the generator used, a "prompt" (the statement,
unless the row has one) and meta["tests"] = [{"input", "output"}]: `mirrorl rl` loads them as
they are and the code reward reads the tests. The report gives counts per reason and, per
problem, its reason code (`Reason`), a detail and its counts.

Does not: detect problems that need a special judge (the report keeps only those without one;
give only such problems), scale the thresholds down for a problem with fewer solutions (it is
dropped as too_few_solutions), or deduplicate inputs beyond exact text.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from mirrorl.config import GenTestsConfig
from mirrorl.data.io import read_rows
from mirrorl.rewards.sandbox import Backend, Isolation, Program, TestCase, Verdict, isolation_for
from mirrorl.rewards.sandbox.reward import FENCE_LANGUAGES
from mirrorl.rewards.testgen.generate import output_of, run_generator, run_on_inputs
from mirrorl.rewards.testgen.vote import select_tests

logger = logging.getLogger(__name__)


class Reason(str, enum.Enum):
    """Why a problem was kept or dropped (checked in this order)."""

    KEPT = "kept"
    NO_GENERATOR = "no_generator"  # none in the row, no generator file, no model
    TOO_FEW_SOLUTIONS = "too_few_solutions"  # fewer runnable solutions than num_solutions
    GENERATOR_FAILED = "generator_failed"  # no python block in the model's response, or no run printed an input
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed twice: says nothing about the problem; rerun
    TOO_FEW_INPUTS = "too_few_inputs"  # fewer distinct inputs than min_tests
    TOO_FEW_TESTS = "too_few_tests"  # fewer inputs with min_agree agreeing solutions than min_tests
    SOLUTIONS_DISAGREE = "solutions_disagree"  # fewer than min_passing solutions pass every kept test


@dataclass(frozen=True)
class CodeProblem:
    """One row of the problems file."""

    id: str
    statement: str
    solutions: list[Program]  # those in a language the sandbox runs
    generator: str | None
    float_tolerance: float | None
    row: dict[str, Any]  # as read; a kept problem is written back with its tests


@dataclass(frozen=True)
class Generator:
    """A problem's generator and where it came from; source None: the model wrote no program."""

    source: str | None
    origin: Literal["row", "file", "model"]


@dataclass
class ProblemReport:
    """What happened to one problem."""

    id: str
    reason: Reason
    detail: str = ""
    generator: Literal["row", "file", "model"] | None = None
    num_inputs: int = 0  # distinct inputs generated
    num_generator_failures: int = 0
    num_duplicate_inputs: int = 0
    num_tests: int = 0  # inputs kept by the vote
    num_passing: int = 0  # chosen solutions passing every kept test
    seconds: float = 0.0
    tests: list[TestCase] = field(default_factory=list, repr=False)  # the voted tests; not in the report

    def to_json(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["tests"]
        return {**fields, "reason": self.reason.value, "seconds": round(self.seconds, 2)}


def _problem(row: dict[str, Any], where: str, default_id: str) -> CodeProblem:
    """Validate one row; ValueError naming `where` (file:row)."""
    statement = row.get("statement", row.get("prompt"))
    if not isinstance(statement, str) or not statement.strip():
        raise ValueError(f"{where}: row has no statement (field 'statement' or 'prompt')")
    raw_id = row.get("id", default_id)
    if not isinstance(raw_id, (str, int)):
        raise ValueError(f"{where}: id must be a string or an integer, got {raw_id!r:.60}")
    solutions = row.get("solutions")
    if not isinstance(solutions, list):
        raise ValueError(f"{where}: row has no 'solutions' list of {{'language': str, 'source': str}}")
    programs = []
    for index, solution in enumerate(solutions):
        if not (isinstance(solution, dict) and isinstance(solution.get("language"), str)
                and isinstance(solution.get("source"), str)):  # fmt: skip
            raise ValueError(f"{where}: solutions[{index}] is not {{'language': str, 'source': str}}")
        if (language := FENCE_LANGUAGES.get(solution["language"].lower())) is not None:
            programs.append(Program(language, solution["source"]))  # type: ignore[arg-type]
    generator, meta = row.get("generator"), row.get("meta", {})
    if generator is not None and not isinstance(generator, str):
        raise ValueError(f"{where}: generator must be the program's source text")
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: meta must be an object")
    tolerance = row.get("float_tolerance", meta.get("float_tolerance"))
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                  or tolerance < 0):
        raise ValueError(f"{where}: float_tolerance must be a number >= 0, got {tolerance!r:.60}")
    return CodeProblem(str(raw_id), statement, programs, generator, tolerance, row)


def read_problems(path: str | Path) -> list[CodeProblem]:
    """Read and validate the problems file; ValueError with file:row on a bad row."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"problems file {path} does not exist")
    problems, seen = [], set()
    for number, row in read_rows(path):
        problem = _problem(row, f"{path}:{number}", f"{path.name}:{number}")
        if problem.id in seen:
            raise ValueError(f"{path}:{number}: duplicate id {problem.id!r}")
        seen.add(problem.id)
        problems.append(problem)
    if not problems:
        raise ValueError(f"problems file {path} holds no problems")
    return problems


def make_tests(
    problem: CodeProblem, generator: Generator | None, cfg: GenTestsConfig, isolation: Isolation,
    pool: ThreadPoolExecutor
) -> ProblemReport:
    """Generate inputs, run the chosen solutions, vote: the problem's report, with the voted tests."""
    report = ProblemReport(problem.id, Reason.KEPT, generator=generator.origin if generator else None)

    def drop(reason: Reason, detail: str) -> ProblemReport:
        report.reason, report.detail = reason, detail
        return report

    if generator is None:
        return drop(Reason.NO_GENERATOR, "no generator in the row or the generator file, and no model")
    runnable = [s for s in problem.solutions if s.language == "python" or isolation.cxx is not None]
    if len(runnable) < cfg.num_solutions:
        return drop(Reason.TOO_FEW_SOLUTIONS, f"{len(runnable)} runnable solutions, {cfg.num_solutions} needed")
    if generator.source is None:
        return drop(Reason.GENERATOR_FAILED, "the model's response holds no ```python block")
    rng = random.Random(f"{cfg.seed}:{problem.id}")
    chosen = rng.sample(runnable, cfg.num_solutions)
    generated = run_generator(generator.source, [rng.randrange(2**31) for _ in range(cfg.num_inputs)],
                              cfg.limits, isolation)
    report.num_inputs, report.num_generator_failures = len(generated.inputs), generated.num_failed
    report.num_duplicate_inputs = generated.num_duplicates
    if generated.sandbox_error:
        return drop(Reason.SANDBOX_ERROR, f"generator: {generated.sandbox_error}")
    if not generated.inputs:
        return drop(Reason.GENERATOR_FAILED, f"all {cfg.num_inputs} runs failed; the first: {generated.detail}")
    if len(generated.inputs) < cfg.min_tests:
        return drop(Reason.TOO_FEW_INPUTS, f"{len(generated.inputs)} distinct inputs, {cfg.min_tests} needed")
    results = list(pool.map(lambda s: run_on_inputs(s, generated.inputs, cfg.limits, isolation), chosen))
    if failed := [r.detail for r in results if r.verdict is Verdict.SANDBOX_ERROR]:
        return drop(Reason.SANDBOX_ERROR, f"{len(failed)} solution runs: {failed[0]}")
    outputs = [[output_of(test) for test in result.tests] for result in results]
    selection = select_tests(generated.inputs, outputs, cfg.min_agree, problem.float_tolerance)
    report.tests, report.num_tests, report.num_passing = selection.tests, len(selection.tests), selection.num_passing
    if len(selection.tests) < cfg.min_tests:
        return drop(Reason.TOO_FEW_TESTS, f"{len(selection.tests)} inputs with >= {cfg.min_agree} agreeing solutions, "
                                          f"{cfg.min_tests} needed")  # fmt: skip
    if selection.num_passing < cfg.min_passing:
        return drop(Reason.SOLUTIONS_DISAGREE, f"{selection.num_passing} of {cfg.num_solutions} solutions pass every "
                                               f"test, {cfg.min_passing} needed")  # fmt: skip
    return report


def gen_tests(
    problems: Sequence[CodeProblem], generators: dict[str, Generator], cfg: GenTestsConfig, isolation: Isolation
) -> list[ProblemReport]:
    """`make_tests` for every problem in order; `generators` maps problem ids to their generator."""
    reports = []
    with ThreadPoolExecutor(cfg.num_workers or os.cpu_count() or 1) as pool:
        for problem in problems:
            started = time.monotonic()
            report = make_tests(problem, generators.get(problem.id), cfg, isolation, pool)
            report.seconds = time.monotonic() - started
            log = logger.warning if report.reason is Reason.SANDBOX_ERROR else logger.info  # infrastructure, not data
            log("gen-tests %s: %s (%d tests) %s", problem.id, report.reason.value, report.num_tests, report.detail)
            reports.append(report)
    return reports


def find_generators(problems: Sequence[CodeProblem], generator_path: str | Path | None) -> dict[str, Generator]:
    """Each problem's generator from its row, else the file (for all) or <dir>/<id>.py."""
    path = None if generator_path is None else Path(generator_path)
    if path is not None and not path.exists():
        raise ValueError(f"generator path {path} does not exist")
    generators = {}
    for problem in problems:
        candidate = path / f"{problem.id}.py" if path is not None and path.is_dir() else path
        if problem.generator is not None:
            generators[problem.id] = Generator(problem.generator, "row")
        elif candidate is not None and candidate.is_file():
            generators[problem.id] = Generator(candidate.read_text(encoding="utf-8"), "file")
    return generators


def _model_generators(
    problems: Sequence[CodeProblem], model_path: str, cfg: GenTestsConfig, device: str
) -> dict[str, Generator]:
    """Generators the model at `model_path` writes for `problems`."""
    from mirrorl.models import load_policy, pick_device  # torch: only when a model is asked for
    from mirrorl.rewards.testgen.writer import write_generators
    from mirrorl.rollout.engine import Engine

    model, tokenizer = load_policy(model_path, pick_device(device))
    engine = Engine(model.eval(), tokenizer.eos_token_id, tokenizer.pad_token_id)
    sources = write_generators(engine, tokenizer, [p.statement for p in problems], cfg.sampling.params(), cfg.seed)
    return {problem.id: Generator(source, "model") for problem, source in zip(problems, sources)}


def _write_kept(problems: Sequence[CodeProblem], reports: Sequence[ProblemReport], generators: dict[str, Generator],
                out_path: Path) -> None:  # fmt: skip
    with out_path.open("w") as out:
        for problem, report in zip(problems, reports):
            if report.reason is Reason.KEPT:
                meta = {**problem.row.get("meta", {}),
                        "tests": [{"input": t.input, "output": t.output} for t in report.tests]}
                if problem.float_tolerance is not None:
                    meta["float_tolerance"] = problem.float_tolerance
                source = generators[problem.id].source
                row = {"prompt": problem.statement, **problem.row, "generator": source, "meta": meta}
                out.write(json.dumps(row) + "\n")


def gen_tests_cli(
    problems_path: str | Path,
    out_path: str | Path,
    report_path: str | Path,
    generator_path: str | Path | None = None,
    model_path: str | None = None,
    *,
    device: str = "auto",
    backend: Backend = "auto",
    **settings: Any,
) -> dict[str, Any]:
    """Generate tests for a problems file; write the kept rows and the report, and return the report.

    `settings` are GenTestsConfig fields (num_inputs=..., min_agree=..., limits=Limits(...)).
    Raises ValueError, one line, on bad settings, paths or rows, and SandboxUnavailable (a one-line
    ValueError) where `backend` is bubblewrap ("auto" included) and it cannot run here: before any
    generator or solution runs, since only backend "none" runs programs unprotected.
    """
    try:
        cfg = GenTestsConfig(**settings)
    except ValidationError as err:
        first = err.errors()[0]
        where = f" {'.'.join(map(str, first['loc']))}" if first["loc"] else ""
        raise ValueError(f"gen-tests{where}: {first['msg'].removeprefix('Value error, ')}") from None
    started = time.monotonic()
    problems = read_problems(problems_path)
    isolation = isolation_for(backend)  # probed once per process; refuses here, before any program runs
    generators = find_generators(problems, generator_path)
    if model_path is not None:
        wanted = [p for p in problems if p.id not in generators and len(p.solutions) >= cfg.num_solutions]
        generators |= _model_generators(wanted, model_path, cfg, device) if wanted else {}
    reports = gen_tests(problems, generators, cfg, isolation)
    out_path, report_path = Path(out_path), Path(report_path)
    for path in (out_path, report_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    _write_kept(problems, reports, generators, out_path)
    counts = Counter(report.reason for report in reports)
    report = {
        "problems_path": str(problems_path), "out_path": str(out_path),
        "num_problems": len(problems), "num_kept": counts[Reason.KEPT],
        "num_tests": sum(r.num_tests for r in reports if r.reason is Reason.KEPT),
        "reasons": {reason.value: counts[reason] for reason in Reason},
        "seconds": round(time.monotonic() - started, 2), "sandbox": isolation.protections.summary(),
        "config": cfg.model_dump(mode="json"), "problems": [r.to_json() for r in reports],
    }  # fmt: skip
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    return report
