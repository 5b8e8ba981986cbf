"""The code reward (k1.5 sec. 2.3.5) and the CLI entry point over the sandbox.

`code_reward(response, problem)`: the program is the last ```python or ```cpp fenced block of the
response; it runs against `problem.meta["tests"]` ([{"input": str, "output": str}]) with
`problem.meta.get("limits", {})` (Limits fields) and `problem.meta.get("float_tolerance")`.
1.0 when every test passes, 0.0 on a real failure (including no program in the response), None
when the sandbox failed twice in a row: a sandbox error is retried once and never scored 0.

`CodeReward(backend)` is that reward with a chosen sandbox backend, what the registry builds for
`rl.reward=code` ("bubblewrap") and `rl.reward=code_unprotected` ("none"). Building it probes the
isolation, so a machine without bubblewrap stops the run before its first iteration with the
one-line `SandboxUnavailable` (a ValueError), instead of failing every sample at scoring time,
where the loop would only count it as an unscored sample.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from mirrorl.config import Limits
from mirrorl.data.io import parse_tests
from mirrorl.rewards.sandbox.isolation import Backend, Isolation, isolation_for
from mirrorl.rewards.sandbox.records import Program, Verdict
from mirrorl.rewards.sandbox.run import run_program
from mirrorl.types import Problem

logger = logging.getLogger(__name__)

FENCE_LANGUAGES = {"python": "python", "py": "python", "python3": "python",
                   "cpp": "cpp", "c++": "cpp", "cc": "cpp", "cxx": "cpp"}
FENCE = re.compile(r"```[ \t]*([\w+]+)[ \t]*\n(.*?)```", re.DOTALL)
SUFFIX_LANGUAGES = {".py": "python", ".cpp": "cpp", ".cc": "cpp", ".cxx": "cpp"}


def extract_program(response: str) -> Program | None:
    """The last fenced block labelled python or cpp, or None.

    >>> extract_program("try:\\n```python\\nprint(1)\\n```\\nbetter:\\n```cpp\\nint main(){}\\n```")
    Program(language='cpp', source='int main(){}\\n')
    >>> extract_program("```text\\nhello\\n```") is None
    True
    """
    for match in reversed(list(FENCE.finditer(response))):
        if (language := FENCE_LANGUAGES.get(match.group(1).lower())) is not None:
            return Program(language, match.group(2))  # type: ignore[arg-type]
    return None


def code_reward(response: str, problem: Problem, isolation: Isolation | None = None) -> float | None:
    """1.0 if the response's program passes every test, 0.0 if not, None if the sandbox failed twice.

    `isolation` None: bubblewrap (`default_isolation`), raising SandboxUnavailable without it.
    """
    tests = parse_tests(problem.meta.get("tests"), f"problem {problem.id!r} meta['tests']")
    program = extract_program(response)
    if program is None:
        return 0.0
    limits = Limits(**problem.meta.get("limits", {}))
    for _ in range(2):
        result = run_program(program, tests, limits, float_tolerance=problem.meta.get("float_tolerance"),
                             isolation=isolation)
        if result.verdict is not Verdict.SANDBOX_ERROR:
            return 1.0 if result.verdict is Verdict.OK else 0.0
    logger.warning("code sandbox failed twice on problem %s: %s; sample left unscored", problem.id, result.detail)
    return None


@dataclass(frozen=True)
class CodeReward:
    """`code_reward` in the sandbox `backend`; building it probes this machine (raises SandboxUnavailable).

    It holds the backend's name, not the probed isolation, so a copy pickled to another machine
    probes that one on its first call (`isolation_for` caches per process) and fails closed there too.
    """

    backend: Backend = "bubblewrap"

    def __post_init__(self) -> None:
        isolation_for(self.backend)

    def __call__(self, response: str, problem: Problem) -> float | None:
        return code_reward(response, problem, isolation_for(self.backend))


def run_cli(
    program_path: str | Path,
    tests_path: str | Path,
    language: str | None = None,
    limits: Limits | None = None,
    float_tolerance: float | None = None,
    backend: Backend = "bubblewrap",
) -> dict:
    """Run a program file on a tests file (JSON list, or JSON lines, of {"input", "output"}).

    `language` defaults from the suffix (.py, .cpp/.cc/.cxx). Returns the JSON-able run result
    plus the sandbox's protections. Raises ValueError on unreadable or malformed inputs, and
    SandboxUnavailable (a ValueError) when `backend` is "bubblewrap" (or "auto") and it cannot run here.
    """
    program_path, tests_path = Path(program_path), Path(tests_path)
    language = language or SUFFIX_LANGUAGES.get(program_path.suffix)
    if language not in ("python", "cpp"):
        raise ValueError(f"{program_path}: cannot tell its language; pass language='python' or 'cpp'")
    try:
        source, text = program_path.read_text(), tests_path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read {err.filename}: {err.strerror}") from None
    try:
        if text.lstrip().startswith("["):
            raw = json.loads(text)
        else:
            raw = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ValueError(f"{tests_path}: not JSON or JSON lines ({err})") from None
    tests = parse_tests(raw, str(tests_path))
    isolation = isolation_for(backend)
    program = Program(language, source)  # type: ignore[arg-type]
    result = run_program(program, tests, limits, float_tolerance=float_tolerance, isolation=isolation)
    return {**result.to_json(), "protections": isolation.protections.to_json()}
