"""The math answer check and the worker processes that run it, each under a hard deadline.

Implements the check behind the rule-based math reward of k1.5 (sec. 2.3.5): a response is right
when its final answer is mathematically equal to the reference. `judge` finds both answers with
the strategies of answer_extraction.py, tried in a configurable order, and compares them with
math-verify (`parse` + `verify`: numbers, fractions, percentages, sets, intervals, matrices,
equations, inequalities). `MathVerifier` runs `judge` in a pool of worker processes. Only the last
`max_response_chars` characters of a response or reference are searched.

Why worker processes: math-verify stops a slow sympy call with SIGALRM, which works only in a
process's main thread, and some inputs hang sympy for good. So each check runs in a persistent
worker process (in its main thread, so math-verify's own timeouts work there), and the parent
enforces a hard per-call deadline: a stuck worker is killed and replaced, and that call returns an
error verdict. Workers start with forkserver (spawn optional): never fork()ed from a parent that
runs torch threads. Measured on 2 shared CPU cores: about 0.5 s to start 2 workers either way;
replacing a killed worker, forkserver 0.09 s, spawn 0.5 s. Pathological answers (power towers,
huge integers, very long strings, deep nesting) are refused before sympy sees them
(answer_extraction.guard_reason); what slips through is stopped by the timeouts. Live verifiers
are closed at interpreter exit.

Error policy: a verdict is "correct", "incorrect" or "error". An error (deadline, crashed worker,
refused answer, reference without an answer, math-verify timing out or failing) says nothing about
the response; a response in which no answer is found is "incorrect".

Does not: turn verdicts into rewards (math_reward.py); grade free-form answers that need a reward
model (the report's CoT RM), multiple-choice letters, or proofs; run inside a daemonic process
(those may not start children).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import queue
import threading
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from mirrorl.config import MatchSettings, MathRewardConfig
from mirrorl.rewards.answer_extraction import AnswerRefused, GuardLimits, ParsedAnswer, find_answer


@dataclass
class MathVerdict:
    """The judgement of one (response, reference) pair; `detail` says why for errors."""

    status: Literal["correct", "incorrect", "error"]
    extracted: str | None  # the response's answer as found, None when none was found
    detail: str = ""
    seconds: float = 0.0  # from sending the check to a worker to its verdict


def guard_limits(config: MathRewardConfig) -> GuardLimits:
    """The bounds on answer strings that `config` sets (see answer_extraction.guard_reason)."""
    return GuardLimits(config.max_answer_chars, config.max_answer_digits, config.max_nesting_depth, config.max_exponent)


# ---------------------------------------------------------------------------------------------
# The check itself; runs in a worker process's main thread.


def _equal(
    reference: ParsedAnswer, response: ParsedAnswer, settings: MatchSettings, library_timeout: int
) -> bool:
    """math-verify over every (reference, response) parse pair.

    Equal if any pair is. A pair sympy fails on counts as unequal (math-verify's own rule: a
    matrix against a set raises) as long as some other pair was compared; if none could be
    compared, or one timed out, the check is undecided: AnswerRefused, an error verdict.
    """
    from math_verify import verify
    from math_verify.errors import TimeoutException

    timed_out = compared = False
    failure = ""
    for gold in reference.parsed:
        for target in response.parsed:
            try:
                if verify(
                    gold,
                    target,
                    float_rounding=settings.float_rounding,
                    strict=settings.strict,
                    allow_set_relation_comp=settings.allow_set_relation_comp,
                    timeout_seconds=library_timeout,
                    raise_on_error=True,
                ):
                    return True
                compared = True
            except TimeoutException:
                timed_out = True
            except Exception as err:  # noqa: BLE001 - judged below: unequal only if another pair compared
                failure = type(err).__name__
    if timed_out:
        raise AnswerRefused("math-verify timed out comparing the answers")
    if not compared:
        raise AnswerRefused(f"math-verify could not compare the answers ({failure})")
    return False


def judge(
    response: str, reference: str, settings: MatchSettings, limits: GuardLimits, library_timeout: int
) -> MathVerdict:
    """One check, in this process (no hard deadline: MathVerifier adds it)."""
    start = time.perf_counter()
    found: ParsedAnswer | None = None
    try:
        gold = find_answer(
            reference, settings.reference_strategies, settings.answer_formats, limits, library_timeout
        )
        if gold is None:
            return MathVerdict("error", None, "no answer found in the reference", time.perf_counter() - start)
        found = find_answer(
            response, settings.response_strategies, settings.answer_formats, limits, library_timeout
        )
        if found is None:
            return MathVerdict("incorrect", None, "no answer found in the response", time.perf_counter() - start)
        status = "correct" if _equal(gold, found, settings, library_timeout) else "incorrect"
        return MathVerdict(status, found.extracted, "", time.perf_counter() - start)
    except AnswerRefused as err:
        return MathVerdict("error", found.extracted if found else None, str(err), time.perf_counter() - start)


def _worker_main(conn: Any, memory_mb: int) -> None:
    """Serve checks until the parent closes the pipe (or sends None)."""
    if memory_mb:
        import resource

        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its failures come back as verdicts
    warm = MatchSettings()
    judge(r"\boxed{\frac{1}{2}}", "0.5", warm, GuardLimits(100, 100, 10, 100), 1)  # import + compile regexes
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # parent gone
            return
        if task is None:
            return
        try:
            verdict = judge(*task)
        except Exception as err:  # noqa: BLE001 - e.g. MemoryError inside sympy: report, keep serving
            verdict = MathVerdict("error", None, f"worker failed: {type(err).__name__}: {err}"[:300])
        conn.send(verdict)


# ---------------------------------------------------------------------------------------------
# The pool of worker processes.

_STARTUP_TIMEOUT_SECONDS = 120.0  # first start imports sympy; slow on a loaded machine


class _Worker:
    """One worker process and the parent's end of its pipe; used by one thread at a time."""

    def __init__(self, context: Any, memory_mb: int) -> None:
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child_conn, memory_mb), daemon=True, name="mirrorl-math-verifier"
        )
        self.process.start()
        child_conn.close()
        self.ready = False

    def wait_ready(self, timeout: float) -> bool:
        """True once the worker has imported math-verify; False if it died or is too slow."""
        try:
            if not self.ready and self.conn.poll(timeout):
                self.ready = self.conn.recv() == "ready"
        except (EOFError, OSError):
            return False
        return self.ready

    def describe_failure(self) -> str:
        self.process.join(1.0)  # a worker whose pipe closed is exiting: let it finish
        if self.process.is_alive():
            return f"alive but silent after {_STARTUP_TIMEOUT_SECONDS:g} s"
        return f"exit code {self.process.exitcode}"

    def stop(self, kill: bool) -> None:
        """Ask the worker to exit (or kill it at once), reap it, close the pipe."""
        if not kill:
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.process.join(1.0)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5.0)
        self.conn.close()


_LIVE: weakref.WeakSet[MathVerifier] = weakref.WeakSet()


class MathVerifier:
    """Checks math answers in a pool of worker processes, with a hard deadline per check.

    Safe to call from many threads at once (each call borrows one idle worker); every process
    that needs one makes its own. Use as a context manager or call close(); live verifiers are
    also closed at interpreter exit.
    """

    def __init__(self, config: MathRewardConfig | None = None) -> None:
        self.config = config or MathRewardConfig()
        self._limits = guard_limits(self.config)
        self._context = multiprocessing.get_context(self.config.start_method)
        if self.config.start_method == "forkserver":
            # takes effect if this process's fork server is not running yet: forks then start warm
            self._context.set_forkserver_preload(["mirrorl.rewards.math_workers", "math_verify"])
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers: set[_Worker] = set()
        self._closed = False
        self._pid = os.getpid()
        num_workers = self.config.num_workers or os.cpu_count() or 1
        for _ in range(num_workers):
            self._idle.put(self._spawn())
        self.num_workers = num_workers
        for worker in list(self._workers):
            if not worker.wait_ready(_STARTUP_TIMEOUT_SECONDS):
                self.close()
                raise RuntimeError(
                    f"math verifier: a worker failed to start ({worker.describe_failure()}; see its traceback above)"
                )
        _LIVE.add(self)

    # -- public -------------------------------------------------------------------------------

    def verify(self, response: str, reference: str, match: MatchSettings | None = None) -> MathVerdict:
        """Judge one response against one reference (match overrides config.match for this call)."""
        if self._closed:
            raise RuntimeError("MathVerifier.verify: the verifier is closed; make a new one")
        if os.getpid() != self._pid:
            raise RuntimeError("MathVerifier.verify: made in another process (forked?); make one in this process")
        limit = self.config.max_response_chars
        settings = match if match is not None else self.config.match
        task = (response[-limit:], reference[-limit:], settings, self._limits, self.config.library_timeout_seconds)
        worker = self._idle.get()
        try:
            worker, verdict = self._run(worker, task)
        finally:
            self._idle.put(worker)
        self._count(verdict)
        return verdict

    def verify_batch(
        self, pairs: Sequence[tuple[str, str]], match: MatchSettings | None = None
    ) -> list[MathVerdict]:
        """Judge (response, reference) pairs on all workers in parallel; verdicts in input order."""
        if not pairs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.num_workers, len(pairs))) as pool:
            return list(pool.map(lambda pair: self.verify(pair[0], pair[1], match), pairs))

    def counters(self) -> dict[str, int]:
        """Counts for metrics: calls = correct + incorrect + errors; among errors, timeouts (hard
        deadline kills), crashes (dead workers) and refused (guarded answers); respawns."""
        keys = ("calls", "correct", "incorrect", "errors", "timeouts", "crashes", "respawns", "refused")
        with self._lock:
            return {key: self._counts[key] for key in keys}

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring)."""
        with self._lock:
            return sorted(worker.process.pid for worker in self._workers)

    def close(self) -> None:
        """Stop every worker. Calls still in flight on other threads get an error verdict."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if os.getpid() != self._pid:  # a forked copy: the workers belong to the parent
                return
            workers = list(self._workers)
            self._workers.clear()
        for worker in workers:
            worker.stop(kill=False)

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        worker = _Worker(self._context, self.config.worker_memory_mb)
        with self._lock:
            self._workers.add(worker)
        return worker

    def _replace(self, worker: _Worker, counter: str) -> _Worker:
        """Kill a stuck or dead worker and start its replacement (it warms up in the background)."""
        worker.stop(kill=True)
        with self._lock:
            self._workers.discard(worker)
            self._counts[counter] += 1
            self._counts["respawns"] += 1
            if self._closed:
                return worker
        return self._spawn()

    def _run(self, worker: _Worker, task: tuple[Any, ...]) -> tuple[_Worker, MathVerdict]:
        """Send one task; return the (possibly replaced) worker and the verdict."""
        if not worker.wait_ready(_STARTUP_TIMEOUT_SECONDS):
            detail = f"worker failed to start ({worker.describe_failure()})"
            return self._replace(worker, "crashes"), MathVerdict("error", None, detail)
        deadline = self.config.timeout_seconds
        start = time.perf_counter()
        try:
            worker.conn.send(task)
            if worker.conn.poll(deadline):
                verdict = worker.conn.recv()
                verdict.seconds = time.perf_counter() - start
                return worker, verdict
        except (EOFError, OSError) as err:
            detail = f"worker died ({type(err).__name__}, {worker.describe_failure()})"
            verdict = MathVerdict("error", None, detail, time.perf_counter() - start)
            return self._replace(worker, "crashes"), verdict
        verdict = MathVerdict("error", None, f"timed out after {deadline:g} s", time.perf_counter() - start)
        return self._replace(worker, "timeouts"), verdict

    def _count(self, verdict: MathVerdict) -> None:
        with self._lock:
            self._counts["calls"] += 1
            self._counts["errors" if verdict.status == "error" else verdict.status] += 1
            if verdict.detail.startswith("refused"):
                self._counts["refused"] += 1


@atexit.register
def _close_live_verifiers() -> None:
    for verifier in list(_LIVE):
        verifier.close()
