"""Problem sets in and out: JSONL, Parquet, a saved `datasets` directory, or the built-in task.

Rows are validated as they are read: a row without a prompt, or without an answer and without
tests, is a ValueError naming the file and the row number (1-based, as an editor shows it), so a
bad row never surfaces mid-run. A row's `meta` object and its tests (the `tests` column, or
meta.tests as `mirrorl gen-tests` writes them) go to `Problem.meta`, where the code reward reads
them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mirrorl.config import DataConfig
from mirrorl.data import tasks
from mirrorl.types import Problem, TestCase

# Seeds of the built-in splits are offset from the run seed so the splits never share a stream.
_SFT_SEED, _RL_SEED, _EVAL_SEED = 1_000, 2_000, 3_000


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) of a JSONL, Parquet or `datasets` file; ValueError names file and row."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open() as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                yield number, row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # optional extra: mirrorl[data]

        for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield number, row
    elif path.is_dir():
        import datasets  # optional extra: mirrorl[data]

        for number, row in enumerate(datasets.load_from_disk(str(path)), start=1):
            yield number, dict(row)
    else:
        raise ValueError(f"{path}: unsupported data format (use .jsonl, .parquet or a saved datasets dir)")


def load_problems(path: str, cfg: DataConfig, task: str = "file") -> list[Problem]:
    """Read and validate problems from a file or `datasets` directory."""
    source = Path(path)
    if not source.exists():
        raise ValueError(f"data file {path} does not exist")
    problems = []
    for number, row in read_rows(source):
        prompt, answer = row.get(cfg.prompt_field), row.get(cfg.answer_field)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}:{number}: row has no prompt (field {cfg.prompt_field!r})")
        meta = row.get("meta") or {}
        if not isinstance(meta, dict):
            raise ValueError(f"{path}:{number}: field 'meta' must be an object, got {type(meta).__name__}")
        if row.get(cfg.tests_field) is not None:
            meta = {**meta, "tests": row[cfg.tests_field]}
        if "tests" in meta:  # a code problem: its tests are the reference
            parse_tests(meta["tests"], f"{path}:{number}: tests")
        elif answer is None or (isinstance(answer, str) and not answer.strip()):
            raise ValueError(f"{path}:{number}: row has no answer (field {cfg.answer_field!r}) and no tests "
                             f"(field {cfg.tests_field!r} or meta.tests)")
        difficulty = row.get(cfg.difficulty_field)
        if difficulty is not None and not isinstance(difficulty, (int, float)):
            raise ValueError(f"{path}:{number}: difficulty must be a number, got {difficulty!r}")
        solution = row.get(cfg.solution_field)
        problems.append(
            Problem(
                id=str(row.get("id", f"{source.name}:{number}")),
                prompt=prompt,
                answer="" if answer is None else str(answer),
                difficulty=None if difficulty is None else float(difficulty),
                solution=solution if isinstance(solution, str) else None,
                task=str(row.get("task", task)),
                meta=meta,
            )
        )
    if not problems:
        raise ValueError(f"data file {path} holds no problems")
    return problems


def builtin_splits(cfg: DataConfig, seed: int) -> dict[str, list[Problem]]:
    """SFT, RL and eval splits of the built-in task; eval prompts never occur in SFT or RL."""
    style = tasks.TraceStyle(slip_prob=cfg.slip_prob, check_prob=cfg.check_prob, terse=cfg.trace_style == "short")
    sft = tasks.make_split(cfg.num_sft, seed + _SFT_SEED, style=style)
    rl = tasks.make_split(cfg.num_rl, seed + _RL_SEED, style=style)
    seen = frozenset(p.prompt for p in sft + rl)
    held_out = tasks.make_split(cfg.num_eval, seed + _EVAL_SEED, exclude_prompts=seen, style=style)
    return {"sft": sft, "rl": rl, "eval": held_out}


def load_split(cfg: DataConfig, split: str, seed: int) -> list[Problem]:
    """`split` in ('sft', 'rl', 'eval'): from the configured file, else from the built-in task."""
    path = cfg.eval_path if split == "eval" else cfg.train_path
    if path is not None:
        return load_problems(path, cfg)
    return builtin_splits(cfg, seed)[split]


def parse_tests(raw: object, where: str) -> list[TestCase]:
    """[{"input": str, "output": str}, ...] -> TestCases; ValueError naming `where` otherwise."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: expected a non-empty list of {{'input': str, 'output': str}}")
    tests = []
    for index, test in enumerate(raw):
        if not (isinstance(test, dict) and isinstance(test.get("input"), str) and isinstance(test.get("output"), str)):
            raise ValueError(f"{where}[{index}]: expected {{'input': str, 'output': str}}, got {test!r:.100}")
        tests.append(TestCase(test["input"], test["output"]))
    return tests
