"""The code sandbox of the code reward (k1.5 sec. 2.3.5): runs untrusted Python or C++ against test cases, safely.

Modules, one job each:
- records.py    Program, the Verdict enum and the results (Limits: mirrorl.config; TestCase: mirrorl.types)
- runner.py     the in-sandbox runner: compiles, runs each test as a limited child, reports raw outcomes
- isolation.py  bubblewrap, or backend "none" when chosen, and the Protections report; the command line
- cgroups.py    per-sample pids and memory cgroups (v2, else v1)
- run.py        run_program: one sandbox start per sample, host-side deadline and cap, judging
- compare.py    whitespace-tolerant, optionally float-tolerant output comparison
- reward.py     code_reward and CodeReward for the RL loop (None on a repeated sandbox error) and run_cli

Fails closed: without a working bubblewrap no program runs (`SandboxUnavailable`, a one-line
ValueError saying how to install it) unless the unprotected backend "none" was chosen explicitly.

Does not: filter syscalls (no seccomp), run languages other than Python and C++, reuse warm
sandboxes (each sample starts bubblewrap afresh), or judge with special checkers.
"""

from mirrorl.config import Limits
from mirrorl.rewards.sandbox.isolation import (
    Backend,
    Isolation,
    Protections,
    SandboxUnavailable,
    default_isolation,
    detect_isolation,
    isolation_for,
    protections,
)
from mirrorl.rewards.sandbox.records import Program, RunResult, TestResult, Verdict
from mirrorl.rewards.sandbox.reward import CodeReward, code_reward, extract_program, run_cli
from mirrorl.rewards.sandbox.run import run_program
from mirrorl.types import TestCase

__all__ = [
    "Backend", "CodeReward", "Isolation", "Limits", "Program", "Protections", "RunResult", "SandboxUnavailable",
    "TestCase", "TestResult", "Verdict", "code_reward", "default_isolation", "detect_isolation", "extract_program",
    "isolation_for", "protections", "run_cli", "run_program",
]  # fmt: skip
