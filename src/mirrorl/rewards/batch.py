"""Batch-first rewards: lifting a one-sample function, and the one guard every caller scores through.

A reward scores a whole batch in one call, `(responses, problems) -> list[float | None]` (the
`BatchReward` protocol): a reward model judges the batch together, the math verifier spreads it
over its worker pool. Such rewards derive from `BatchFirst`, and `batched` marks a user's batch
function as one; a one-sample function `(response, problem) -> float | None` (the built-in
verifiers, a user's `module:function`) is lifted by `per_sample`.

`GuardedReward` is what the RL loop and evaluation call. A reward that raises must not cost the
run, nor turn an infrastructure failure into a reward of 0 (k1.5 sec. 2.3.5 makes the reward the
only training signal): the samples it could not score are returned as None with their errors, for
the caller to drop and count. When a batch call raises, each of its samples is scored alone, so one
bad sample costs only itself (a reward model that fails on everything fails once per sample).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mirrorl.types import BatchReward, Problem

SampleReward = Callable[[str, Problem], "float | None"]


class BatchFirst(ABC):
    """Base of the rewards that score a whole batch in one call (a `BatchReward`)."""

    @abstractmethod
    def __call__(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[float | None]: ...


@dataclass(frozen=True)
class Batched(BatchFirst):
    """A user's batch function `(responses, problems) -> list[float | None]`, marked as such by `batched`."""

    function: Callable[[Sequence[str], Sequence[Problem]], list[float | None]]

    def __call__(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[float | None]:
        return self.function(responses, problems)


def batched(function: Callable[[Sequence[str], Sequence[Problem]], list[float | None]]) -> Batched:
    """Decorate a batch function so `rl.reward=module:name` takes it as is instead of lifting it."""
    return Batched(function)


@dataclass(frozen=True)
class PerSample(BatchFirst):
    """A one-sample reward function as a batch reward: one call per (response, problem).

    >>> lifted = per_sample(lambda response, problem: float(response == problem.answer))
    >>> lifted(["4", "5"], [Problem(id="a", prompt="2+2?", answer="4")] * 2)
    [1.0, 0.0]
    """

    function: SampleReward

    def __call__(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[float | None]:
        return [self.function(response, problem) for response, problem in zip(responses, problems, strict=True)]


def per_sample(function: SampleReward) -> PerSample:
    """Lift `function(response, problem)` to the batch protocol."""
    return PerSample(function)


@dataclass
class Scores:
    """What a guarded call returns: a value per sample (None: unscored) and the errors raised."""

    values: list[float | None]
    errors: list[str] = field(default_factory=list)  # one line per sample that raised, first line of the error

    @property
    def num_unscored(self) -> int:
        return sum(value is None for value in self.values)


def _one_line(err: Exception) -> str:
    return (f"{type(err).__name__}: {err}".splitlines() or [type(err).__name__])[0]


@dataclass(frozen=True)
class GuardedReward:
    """`reward` with its exceptions caught and counted (see the module docstring)."""

    reward: BatchReward

    def __call__(self, responses: Sequence[str], problems: Sequence[Problem]) -> Scores:
        try:
            values = list(self.reward(responses, problems))
        except Exception as err:  # noqa: BLE001 - any failure of the scorer drops the samples, counted
            if len(responses) == 1:
                return Scores([None], [_one_line(err)])
            alone = [self(responses[i : i + 1], problems[i : i + 1]) for i in range(len(responses))]
            return Scores([s.values[0] for s in alone], [e for s in alone for e in s.errors])
        if len(values) != len(responses):
            raise ValueError(f"the reward returned {len(values)} values for {len(responses)} responses")
        return Scores(values)
