"""The records that flow through mirrorl: problems, sampled responses and their groups.

A Problem is one prompt with a verifiable reference answer (k1.5 sec. 2.1). A Sample is one
response drawn from the policy for it; the k samples of one problem form a group, the unit of the
mean-reward baseline of online policy mirror descent (sec. 2.3.2) and of the length penalty
(sec. 2.3.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One prompt with its reference answer.

    `difficulty` feeds the curriculum sampler (higher is harder); `solution` is an optional
    long-CoT response used by supervised warm-up; `meta` carries task-specific fields.
    """

    id: str
    prompt: str
    answer: str
    difficulty: float | None = None
    solution: str | None = None
    task: str = "chain_sum"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One sampled response to a problem, with everything the loss and the metrics need."""

    problem_index: int  # index into the problem list the sampler draws from
    prompt_ids: list[int]
    response_ids: list[int]
    finish_reason: str  # "stop" | "length" | "budget" | "repeat"
    group_id: int = 0  # the k samples of one draw of a problem share it
    versions: list[int] = field(default_factory=list)  # per response token: the iteration whose policy made it
    logprobs: list[float] = field(default_factory=list)  # per response token: log-prob under that policy
    text: str = ""
    correct: bool = False
    reward: float = 0.0  # correctness reward (before the length reward)
    length_reward: float = 0.0
