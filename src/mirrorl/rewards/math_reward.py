"""The rule-based math reward of k1.5 (sec. 2.3.5): 1.0 when a response's final answer equals the
reference, 0.0 when it does not, None when the check itself failed.

The check (answer finding, guards, math-verify's equivalence) and the pool of worker processes
that runs it with a hard deadline per call are in math_workers.py; this module turns its verdicts
into rewards and is the batch-first 'math' reward of the registry (`mirrorl.types.BatchReward`).
Checks run in worker processes because math-verify stops a slow sympy call with SIGALRM, which
works only in a process's main thread, and some inputs hang sympy for good: a stuck worker is
killed at the deadline and replaced. Workers start with forkserver (spawn optional), never fork()ed
from a parent that runs torch threads.

Error policy: an error verdict (deadline, crashed worker, refused answer, reference without an
answer, math-verify timing out or failing) says nothing about the response: it becomes None, and
the RL loop drops that sample and counts it; it is never scored as a wrong answer. A response in
which no answer is found is incorrect (0.0).

Does not: grade free-form answers that need a reward model (the report's CoT RM), multiple-choice
letters, or proofs; score one sample at a time (a call takes a batch and spreads it over the pool);
run inside a daemonic process (those may not start the workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mirrorl.config import MathRewardConfig
from mirrorl.rewards.batch import BatchFirst
from mirrorl.rewards.math_workers import MathVerdict, MathVerifier

if TYPE_CHECKING:
    from mirrorl.types import Problem


def reward_from_verdicts(verdicts: Sequence[MathVerdict]) -> list[float | None]:
    """1.0 correct, 0.0 incorrect, None error (drop the sample, count it; never a wrong answer)."""
    values = {"correct": 1.0, "incorrect": 0.0, "error": None}
    return [values[verdict.status] for verdict in verdicts]


class MathProblemReward(BatchFirst):
    """The 'math' reward with the run's `rewards.math` settings: scores a batch of responses
    against their problems' answers on the verifier's worker pool, in order.

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

    def __call__(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[float | None]:
        pairs = [(response, problem.answer) for response, problem in zip(responses, problems, strict=True)]
        return reward_from_verdicts(self._get().verify_batch(pairs))
