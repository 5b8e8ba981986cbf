"""Rule-based math reward: find the final answer, decide equivalence with math-verify, safely.

Implements the math answer check of k1.5 (sec. 2.3.5): a response is right when its final answer
is mathematically equal to the reference. Answers are found by the strategies of
answer_extraction.py, tried in a configurable order, and compared with math-verify (`parse` + `verify`: numbers, fractions, percentages,
sets, intervals, matrices, equations, inequalities). Only the last `max_response_chars`
characters of a response are searched.

Why worker processes: math-verify stops a slow sympy call with SIGALRM, which works only in a
process's main thread, and some inputs hang sympy for good. So each check runs in a persistent
worker process (in its main thread, so math-verify's own timeouts work there), and the parent
enforces a hard per-call deadline: a stuck worker is killed and replaced, and that call returns an
error verdict. Workers start with forkserver (spawn optional): never fork()ed from a parent that
runs torch threads. Measured on 2 shared CPU cores: about 0.5 s to start 2 workers either way;
replacing a killed worker, forkserver 0.09 s, spawn 0.5 s. Pathological answers (power towers,
huge integers, very long strings, deep nesting) are refused before sympy sees them
(answer_extraction.guard_reason); what slips through is stopped by the timeouts.

Error policy: a verdict is "correct", "incorrect" or "error". An error (deadline, crashed worker,
refused answer, reference without an answer, math-verify timing out or failing) says nothing
about the response: `reward_from_verdicts` and `math_reward` map it to None, and the RL loop drops
that sample and counts it; it is never scored as a wrong answer. A response in which no answer
is found is "incorrect".

Does not: grade free-form answers that need a reward model (the report's CoT RM), multiple-choice
letters, or proofs; run inside a daemonic process (those may not start children).
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
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mirrorl.rewards.answer_extraction import AnswerRefused, GuardLimits, ParsedAnswer, find_answer

if TYPE_CHECKING:
    from mirrorl.types import Problem

Strategy = Literal["final_answer", "boxed", "answer_phrase", "math_verify", "last_number", "whole"]
AnswerFormat = Literal["latex", "expr"]


class MatchSettings(BaseModel):
    """How answers are found and compared. Datasets differ, so a call may override these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    response_strategies: tuple[Strategy, ...] = Field(
        default=("final_answer", "math_verify"),
        min_length=1,
        description="Where the response's answer is looked for, first success wins: 'boxed' (last "
        "\\boxed{}), 'answer_phrase' ('the answer is X'), 'final_answer' (the later of those two), "
        "'math_verify' (math-verify's extractor over the text), 'last_number', 'whole' (the text is the answer).",
    )
    reference_strategies: tuple[Strategy, ...] = Field(
        default=("boxed", "whole"),
        min_length=1,
        description="Same, for the reference: a boxed answer if it has one, else the whole text.",
    )
    answer_formats: tuple[AnswerFormat, ...] = Field(
        default=("latex", "expr"),
        min_length=1,
        description="math-verify extraction targets: 'latex' (math environments), 'expr' (plain numbers "
        "and expressions such as 1,000.5 or 2/3). Use ['expr'] for plain-number datasets (GSM8K).",
    )
    float_rounding: int = Field(6, ge=0, le=15, description="Decimal places floats are rounded to before comparing.")
    strict: bool = Field(True, description="False matches variables by position (f(x) = f(y)) and sets with tuples.")
    allow_set_relation_comp: bool = Field(
        False, description="Also accept an inequality for an interval reference (-2 <= x <= 7 for [-2, 7])."
    )


class MathRewardConfig(BaseModel):
    """The math verifier: answer matching, worker pool, deadline, and the guards on inputs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    match: MatchSettings = Field(default_factory=MatchSettings, description="Answer finding and comparison.")
    timeout_seconds: float = Field(
        4.0, gt=0, le=600, description="Hard deadline of one check: past it the worker is killed, the call is an error."
    )
    library_timeout_seconds: int = Field(
        1, ge=0, description="math-verify's own timeout of each parse and comparison inside a worker (whole "
        "seconds, SIGALRM); it fires before the hard deadline and keeps the worker. 0 leaves only the deadline.",
    )
    num_workers: int = Field(0, ge=0, le=256, description="Worker processes; 0 means one per CPU core.")
    start_method: Literal["forkserver", "spawn"] = Field(
        "forkserver", description="How workers start; both are safe with torch threads (no fork of a threaded parent)."
    )
    worker_memory_mb: int = Field(2048, ge=0, description="Address-space limit of a worker (MiB); 0 for none.")
    max_response_chars: int = Field(
        100_000, ge=1000, description="Only the last this-many characters of a response or reference are searched."
    )
    max_answer_chars: int = Field(1000, ge=10, description="Longer extracted answers are refused (error).")
    max_answer_digits: int = Field(500, ge=1, description="Answers with a longer run of digits are refused (error).")
    max_nesting_depth: int = Field(
        10, ge=1, le=50, description="Answers with brackets nested deeper are refused (parsing is exponential in it)."
    )
    max_exponent: int = Field(
        10**6, ge=1, description="Integer power chains such as 2^{2^{100}} whose exponent exceeds this are refused."
    )

    @model_validator(mode="after")
    def _library_timeout_fires_first(self) -> MathRewardConfig:
        if self.library_timeout_seconds >= self.timeout_seconds:
            raise ValueError(
                f"library_timeout_seconds={self.library_timeout_seconds} must be below timeout_seconds="
                f"{self.timeout_seconds:g}: math-verify's own timeout should fire before the worker is killed "
                "(raise timeout_seconds or set library_timeout_seconds=0)"
            )
        return self

    def limits(self) -> GuardLimits:
        return GuardLimits(self.max_answer_chars, self.max_answer_digits, self.max_nesting_depth, self.max_exponent)


@dataclass
class MathVerdict:
    """The judgement of one (response, reference) pair; `detail` says why for errors."""

    status: Literal["correct", "incorrect", "error"]
    extracted: str | None  # the response's answer as found, None when none was found
    detail: str = ""
    seconds: float = 0.0  # from sending the check to a worker to its verdict


def reward_from_verdicts(verdicts: Sequence[MathVerdict]) -> list[float | None]:
    """1.0 correct, 0.0 incorrect, None error (drop the sample, count it; never a wrong answer)."""
    values = {"correct": 1.0, "incorrect": 0.0, "error": None}
    return [values[verdict.status] for verdict in verdicts]


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
        self._limits = self.config.limits()
        self._context = multiprocessing.get_context(self.config.start_method)
        if self.config.start_method == "forkserver":
            # takes effect if this process's fork server is not running yet: forks then start warm
            self._context.set_forkserver_preload(["mirrorl.rewards.math_reward", "math_verify"])
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


# ---------------------------------------------------------------------------------------------
# Plain-function rewards for the registry.

_DEFAULT: MathVerifier | None = None
_DEFAULT_LOCK = threading.Lock()


def default_verifier() -> MathVerifier:
    """This process's verifier with the default config, started on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT._pid != os.getpid():  # a forked child makes its own
            _DEFAULT = MathVerifier()
        return _DEFAULT


def math_reward(response: str, reference: str) -> float | None:
    """1.0 if the response's final answer equals the reference, 0.0 if not, None on error.

    >>> math_reward(r"... so $x = \\boxed{\\dfrac{1}{2}}$.", "0.5")
    1.0
    >>> math_reward("The answer is 7.", r"\\frac{14}{3}")
    0.0
    """
    return reward_from_verdicts([default_verifier().verify(response, reference)])[0]


class MathProblemReward:
    """The 'math' reward with the run's `rewards.math` settings; the RL loop scores a batch at once.

    The verifier (its worker processes) starts on the first call, so building the reward at start
    costs nothing.
    """

    def __init__(self, config: MathRewardConfig) -> None:
        self.config = config
        self._verifier: MathVerifier | None = None

    def _get(self) -> MathVerifier:
        if self._verifier is None:
            self._verifier = MathVerifier(self.config)
        return self._verifier

    def __call__(self, response: str, problem: Problem) -> float | None:
        return reward_from_verdicts([self._get().verify(response, problem.answer)])[0]

    def score_batch(self, items: Sequence[tuple[str, Problem]]) -> list[float | None]:
        return reward_from_verdicts(self._get().verify_batch([(text, problem.answer) for text, problem in items]))
