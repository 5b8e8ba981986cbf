"""Run one program against its tests in one sandbox start, and judge the outcome.

One sample is one sandbox: the runner (runner.py) starts once, compiles (C++), runs every test
as its own child and reports raw outcomes; this module compares stdout with the expected
outputs, which never enter the sandbox (k1.5 sec. 2.3.5 runs code against test cases; the
report's sandbox reuses cgroups and an overlay rootfs for a 0.04 s start, we start bubblewrap
afresh per sample: see benchmarks/sandbox.py for the cost).

The host side is bounded too: the runner's report is read up to a cap derived from the limits,
before a deadline (start-up allowance + compilation + every test's wall limit); past either, the
whole sandbox is killed (its process group; bubblewrap's pid namespace then dies with it) and
the run is a sandbox error, as is any report that is malformed or stops early. A program's own
failures are never sandbox errors.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from mirrorl.config import Limits
from mirrorl.rewards.sandbox.compare import outputs_match
from mirrorl.rewards.sandbox.isolation import Isolation, default_isolation
from mirrorl.rewards.sandbox.records import Program, RunResult, TestResult, Verdict
from mirrorl.rewards.sandbox.runner import STDERR_TAIL_BYTES, Pumped, pump
from mirrorl.types import TestCase

STARTUP_SECONDS = 10.0  # allowance for starting the sandbox on a loaded machine
PER_TEST_SLACK_SECONDS = 1.0  # killing and reaping after a test's deadline
RUNNER_PROCESSES = 8  # bubblewrap, the runner, and g++'s cc1plus/as/collect2/ld, counted by pids.max
MEMORY_MARKERS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory")


def memory_budget(limits: Limits) -> int:
    """The cgroup memory limit of a whole sample.

    Two programs' worth (a forking bomb hits it; one process hits RLIMIT_AS first), the tmpfs
    work dir (its pages are charged to the group), the runner's output buffers and 64 MiB for
    the runner and bubblewrap.
    """
    return 2 * limits.memory_bytes + limits.work_dir_bytes + 4 * limits.output_bytes + (64 << 20)


def run_program(
    program: Program,
    tests: Sequence[TestCase],
    limits: Limits | None = None,
    *,
    float_tolerance: float | None = None,
    isolation: Isolation | None = None,
    host_deadline_seconds: float | None = None,
) -> RunResult:
    """Run `program` on every test in one sandbox; the verdict is the first test's that is not ok.

    `host_deadline_seconds` overrides the deadline computed from the limits (tests use it).
    """
    limits = limits or Limits()
    isolation = isolation or default_isolation()
    if not tests:
        raise ValueError("run_program: no tests; give at least one TestCase")
    if program.language not in ("python", "cpp"):
        raise ValueError(f"program language {program.language!r}: use 'python' or 'cpp'")
    if program.language == "cpp" and isolation.cxx is None:
        return RunResult(Verdict.SANDBOX_ERROR, (), "no C++ compiler (g++) on this machine")
    job = {"language": program.language, "source": program.source, "inputs": [t.input for t in tests],
           "limits": limits.model_dump(), **isolation.job_fields()}  # fmt: skip
    if host_deadline_seconds is None:
        compile_seconds = limits.compile_seconds if program.language == "cpp" else 0.0
        host_deadline_seconds = (STARTUP_SECONDS + compile_seconds
                                 + len(tests) * (limits.wall_seconds + PER_TEST_SLACK_SECONDS))
    line_bytes = 4 * limits.output_bytes // 3 + 8 * STDERR_TAIL_BYTES + 1024  # base64 stdout, JSON-escaped stderr
    start, launched_at = time.monotonic(), time.time()
    try:
        launched = _launch(isolation, job, limits, start + host_deadline_seconds, (len(tests) + 2) * line_bytes)
    except OSError as err:
        return RunResult(Verdict.SANDBOX_ERROR, (), f"cannot start the sandbox: {err}")
    total_seconds, pumped = time.monotonic() - start, launched.pumped
    if pumped.timed_out or pumped.overflowed:
        what = f"deadline of {host_deadline_seconds:.1f} s" if pumped.timed_out else "report size cap"
        return RunResult(Verdict.SANDBOX_ERROR, (), f"the runner passed the host's {what}", total_seconds=total_seconds)
    try:
        lines = [json.loads(line) for line in pumped.stdout.decode().splitlines()]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return RunResult(Verdict.SANDBOX_ERROR, (), f"unreadable runner report: {err}", total_seconds=total_seconds)
    if launched.returncode != 0 or not lines or lines[0].get("kind") != "ready":
        stderr = pumped.stderr_tail.decode(errors="replace").strip()[-500:]
        detail = f"runner exit code {launched.returncode}: {stderr}"
        return RunResult(Verdict.SANDBOX_ERROR, (), detail, total_seconds=total_seconds)
    try:
        result = judge(lines[1:], tests, limits, float_tolerance, launched.oom_kills)
    except (KeyError, TypeError, ValueError) as err:
        result = RunResult(Verdict.SANDBOX_ERROR, (), f"malformed runner report: {err!r}")
    return RunResult(
        result.verdict, result.tests, result.detail, lines[0]["time"] - launched_at, total_seconds,
        launched.peak_memory_bytes
    )


@dataclass(frozen=True)
class Launched:
    """What one sandbox start gave back."""

    pumped: Pumped  # its report (stdout) and stderr tail, and whether the deadline or cap hit
    returncode: int
    oom_kills: int  # OOM kills in the sample's cgroup
    peak_memory_bytes: int | None  # the sample cgroup's peak memory; None without one


def _launch(isolation: Isolation, job: dict, limits: Limits, deadline: float, max_bytes: int) -> Launched:
    """Start the sandbox, hand it the job and read its report.

    Past the deadline or the size cap, the sandbox's process group is killed (bubblewrap's pid
    namespace dies with it; with backend "none", the cgroup's removal kills what is left).
    """
    with ExitStack() as stack:
        cgroup = None
        if isolation.cgroup_root is not None:
            cgroup = isolation.cgroup_root.create(limits.num_processes + RUNNER_PROCESSES, memory_budget(limits))
            stack.callback(cgroup.remove)
        cwd = None
        if isolation.bwrap is None:  # backend "none": the work dir is on the host
            cwd = tempfile.mkdtemp(prefix="mirrorl-sandbox-")
            stack.callback(shutil.rmtree, cwd, ignore_errors=True)
            if job["child_uid"] is not None:
                os.chown(cwd, job["child_uid"], job["child_uid"])
        process = subprocess.Popen(
            isolation.command(cgroup, limits.work_dir_bytes), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, close_fds=True, env={}, cwd=cwd,
        )  # fmt: skip
        pumped = pump(process, json.dumps(job).encode(), deadline, max_bytes)
        if pumped.timed_out or pumped.overflowed:
            os.killpg(process.pid, signal.SIGKILL)
        try:
            returncode = process.wait(PER_TEST_SLACK_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            returncode = process.wait()
        if cgroup is None:
            return Launched(pumped, returncode, 0, None)
        return Launched(pumped, returncode, cgroup.oom_kills(), cgroup.peak_memory_bytes())


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _failure(line: dict, limits: Limits, oom_kills: int) -> TestResult | None:
    """The result of a run that failed in a way seen without its stdout; None if it exited with 0."""
    status, code, stderr = line["status"], line["code"], line["stderr"]
    last_stderr_line = stderr.strip().splitlines()[-1][-200:] if stderr.strip() else ""
    if status == "exited" and code == 0:
        return None
    if status == "timeout":
        verdict, detail = Verdict.TIMEOUT, f"over {limits.cpu_seconds} s CPU or {limits.wall_seconds} s wall"
    elif status == "output_limit":
        verdict, detail = Verdict.OUTPUT_LIMIT, f"more than {limits.output_bytes} bytes of output"
    elif (any(marker in stderr for marker in MEMORY_MARKERS)
          or (status == "signaled" and code == signal.SIGKILL and oom_kills)):
        verdict, detail = Verdict.MEMORY, f"out of memory: {last_stderr_line}"
    elif status == "signaled":
        verdict, detail = Verdict.RUNTIME_ERROR, f"killed by {_signal_name(code)}"
    else:
        verdict, detail = Verdict.RUNTIME_ERROR, f"exit code {code}: {last_stderr_line}"
    return TestResult(verdict, line["wall_seconds"], line["cpu_seconds"], detail)


def judge(
    lines: list[dict], tests: Sequence[TestCase], limits: Limits, float_tolerance: float | None, oom_kills: int
) -> RunResult:
    """Verdicts from the runner's report lines (those after "ready"), against the expected outputs."""
    if lines and lines[0]["kind"] == "compile":
        compiled, lines = _failure(lines[0], limits, oom_kills), lines[1:]
        if compiled is not None:  # a compiler flooding its diagnostics is still a failed compilation
            verdict = Verdict.RUNTIME_ERROR if compiled.verdict is Verdict.OUTPUT_LIMIT else compiled.verdict
            return RunResult(verdict, (), f"compilation failed: {compiled.detail}")
    if len(lines) > len(tests) or any(line["kind"] != "test" for line in lines):
        return RunResult(Verdict.SANDBOX_ERROR, (),
                         f"unexpected runner report lines: {[line['kind'] for line in lines]}")
    results: list[TestResult] = []
    crashed = False  # the last run failed in a way the runner sees, so it may stop there
    for line, test in zip(lines, tests):
        result = _failure(line, limits, oom_kills)
        crashed = result is not None
        if result is None:
            actual = base64.b64decode(line["stdout"]).decode("utf-8", "replace")
            matched = outputs_match(actual, test.output, float_tolerance)
            verdict, detail = (Verdict.OK, "") if matched else (Verdict.WRONG_ANSWER, f"output {actual[:80]!r}")
            result = TestResult(verdict, line["wall_seconds"], line["cpu_seconds"], detail, actual)
        results.append(result)
    if len(results) < len(tests) and not (limits.stop_on_failure and crashed):
        return RunResult(Verdict.SANDBOX_ERROR, tuple(results), f"runner reported {len(results)} of {len(tests)} tests")
    first_failed = next((r for r in results if r.verdict is not Verdict.OK), None)
    if first_failed is None:
        return RunResult(Verdict.OK, tuple(results))
    return RunResult(first_failed.verdict, tuple(results), first_failed.detail)
