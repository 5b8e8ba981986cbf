"""What goes into a sandboxed run and what comes out: limits, program, tests, verdicts.

The verdict set is the one issue #4 asks for. `SANDBOX_ERROR` means the sandbox failed, not the
program; callers must never turn it into a reward (see reward.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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


class Limits(BaseModel):
    """Resource limits of one sandboxed run. Per test unless said otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_seconds: int = Field(
        2, ge=1, le=600, description="RLIMIT_CPU soft limit (SIGXCPU); the hard limit, one second more, is SIGKILL."
    )
    wall_seconds: float = Field(4.0, gt=0, le=600, description="Wall-clock deadline of one test, from start to exit.")
    memory_bytes: int = Field(512 << 20, ge=32 << 20, description="RLIMIT_AS and RLIMIT_DATA of each program process.")
    output_bytes: int = Field(
        1 << 20, ge=1024, description="Cap on the stdout (and on the stderr) of one test; past it the test is killed."
    )
    num_processes: int = Field(
        32, ge=1, le=4096, description="Processes and threads of the program: RLIMIT_NPROC, and cgroup pids.max."
    )
    num_open_files: int = Field(64, ge=16, le=65536, description="RLIMIT_NOFILE of each process.")
    file_bytes: int = Field(16 << 20, ge=0, description="RLIMIT_FSIZE: the largest file a process may write.")
    work_dir_bytes: int = Field(64 << 20, ge=1 << 20, description="Size of the private tmpfs work dir (bubblewrap).")
    compile_seconds: float = Field(30.0, gt=0, le=600, description="CPU and wall limit of the C++ compilation.")
    stop_on_failure: bool = Field(True, description="Skip the remaining tests after a crash, timeout or output overflow.")


@dataclass(frozen=True)
class Program:
    """Source code and its language."""

    language: Language
    source: str


@dataclass(frozen=True)
class TestCase:
    """One stdin and the stdout expected for it."""

    __test__ = False  # not a pytest class

    input: str
    output: str


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
