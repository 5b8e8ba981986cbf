"""Throughput of the code sandbox against plain subprocesses, on this machine.

Runs N samples of a trivial Python program (read two numbers, print their sum) with 3 tests
each, from a small thread pool: once through the sandbox (one sandbox start per sample, all its
tests inside: what code_reward does) under backend "bubblewrap", once under backend "none"
(chosen explicitly: the unprotected plain child, rlimits and cgroups only), and once as plain
unsandboxed `python3` subprocesses, one per test. Every sandboxed run must be verdict ok, else
the benchmark fails. Without a working bubblewrap it stops with the sandbox's one-line refusal.

Usage: python benchmarks/sandbox.py [--samples 50] [--workers 2]
Prints one JSON object as its last line: runs_per_second (sandboxed samples per second),
mean_start_seconds (launch to the runner's first report line), mean_run_seconds,
none_runs_per_second, plain_runs_per_second, and throughput_ratio = sandboxed / plain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mirrorl.rewards.sandbox import (
    Isolation,
    Program,
    SandboxUnavailable,
    TestCase,
    Verdict,
    isolation_for,
    run_program,
)

SOURCE = "a, b = map(int, input().split())\nprint(a + b)\n"
TESTS = [TestCase("1 2\n", "3\n"), TestCase("40 2\n", "42\n"), TestCase("-5 5\n", "0\n")]


def sandboxed(isolation: Isolation, samples: int, workers: int) -> tuple[float, list]:
    """Samples per second and the run results."""
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda _: run_program(Program("python", SOURCE), TESTS, isolation=isolation),
                                range(samples)))
    seconds = time.perf_counter() - start
    failed = [r for r in results if r.verdict is not Verdict.OK]
    if failed:
        raise SystemExit(f"{len(failed)} of {samples} sandboxed runs failed, first: {failed[0]}")
    return samples / seconds, results


def plain(python: str, samples: int, workers: int) -> float:
    """Samples per second with one unsandboxed subprocess per test, checked the same way."""
    with tempfile.TemporaryDirectory() as work_dir:
        program = Path(work_dir) / "main.py"
        program.write_text(SOURCE)

        def sample(_: int) -> None:
            for test in TESTS:
                done = subprocess.run([python, "-I", str(program)], input=test.input.encode(), capture_output=True,
                                      timeout=10)
                if done.stdout.decode().split() != test.output.split():
                    raise SystemExit(f"plain run failed: {done}")

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(sample, range(samples)))
        return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50, help="samples per mode")
    parser.add_argument("--workers", type=int, default=2, help="threads running samples at once")
    args = parser.parse_args()
    try:
        isolation = isolation_for("bubblewrap")
    except SandboxUnavailable as err:
        raise SystemExit(str(err)) from None
    unprotected = isolation_for("none")
    sandboxed(isolation, args.workers, args.workers)  # warm the page cache
    runs_per_second, results = sandboxed(isolation, args.samples, args.workers)
    none_runs_per_second, _ = sandboxed(unprotected, args.samples, args.workers)
    plain_runs_per_second = plain(isolation.python, args.samples, args.workers)
    print(json.dumps({
        "backend": isolation.protections.backend,
        "missing_protections": isolation.protections.missing(),
        "samples": args.samples, "workers": args.workers, "tests_per_sample": len(TESTS),
        "runs_per_second": round(runs_per_second, 2),
        "mean_start_seconds": round(statistics.mean(r.start_seconds for r in results), 4),
        "mean_run_seconds": round(statistics.mean(r.total_seconds for r in results), 4),
        "none_runs_per_second": round(none_runs_per_second, 2),
        "plain_runs_per_second": round(plain_runs_per_second, 2),
        "throughput_ratio": round(runs_per_second / plain_runs_per_second, 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
