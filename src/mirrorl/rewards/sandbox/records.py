"""What goes into a sandboxed run and what comes out: the program, the verdicts and the results.

`SANDBOX_ERROR` means the sandbox failed, not the program; callers must never turn it into a
reward (see reward.py). The limits are a config section (`mirrorl.config.Limits`); a test case is
a record of `mirrorl.types`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

Language = Literal["python", "cpp"]


class Verdict(str, enum.Enum):
    """How one test, or a whole run (its first failing test), ended."""

    OK = "ok"
    WRONG_ANSWER = "wrong_answer"
    RUNTIME_ERROR = "runtime_error"  # non-zero exit, a crash, or a failed compilation
    TIMEOUT = "timeout"  # wall-clock deadline or CPU limit (SIGXCPU, then SIGKILL)
    MEMORY = "memory"  # MemoryError / std::bad_alloc under RLIMIT_AS, or the cgroup OOM killer
    OUTPUT_LIMIT = "output_limit"  # stdout or stderr passed `output_bytes`
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed: says nothing about the program


@dataclass(frozen=True)
class Program:
    """Source code and its language."""

    language: Language
    source: str


@dataclass(frozen=True)
class TestResult:
    """The verdict of one test; `detail` says why when it is not ok.

    `stdout` is what the program printed (capped at `output_bytes`) when it exited normally, ok
    or wrong answer; empty after a crash, timeout or overflow. Test generation reads it.
    """

    __test__ = False

    verdict: Verdict
    wall_seconds: float
    cpu_seconds: float
    detail: str = ""
    stdout: str = ""


@dataclass(frozen=True)
class RunResult:
    """A whole run: its verdict is the first test's that is not ok (ok when all are).

    `tests` may be shorter than the test list: a failed compilation runs none, and with
    `stop_on_failure` the tests after a crash or timeout are not run.
    """

    verdict: Verdict
    tests: tuple[TestResult, ...]
    detail: str = ""
    start_seconds: float = 0.0  # from launching the sandbox to the runner's first report line
    total_seconds: float = 0.0
    peak_memory_bytes: int | None = None  # the whole sample's, from its cgroup; None without one

    def to_json(self) -> dict:
        """A JSON-able dict (the CLI's output)."""
        return {
            "verdict": self.verdict.value,
            "detail": self.detail,
            "start_seconds": round(self.start_seconds, 4),
            "total_seconds": round(self.total_seconds, 4),
            "peak_memory_bytes": self.peak_memory_bytes,
            "tests": [
                {"verdict": t.verdict.value, "wall_seconds": round(t.wall_seconds, 4),
                 "cpu_seconds": round(t.cpu_seconds, 4), "detail": t.detail}
                for t in self.tests
            ],
        }
