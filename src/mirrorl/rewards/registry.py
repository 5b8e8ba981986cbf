"""Reward functions by name: the built-in verifiers, or any user function by import path.

A reward function takes (response text, problem) and returns a float, or None when the response
could not be scored because the scorer itself failed (a crashed sandbox, a timed-out verifier).
None is never turned into a reward of 0: the loop drops that sample and counts it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from mirrorl.data import tasks
from mirrorl.rewards.math_reward import math_problem_reward
from mirrorl.rewards.sandbox import code_reward
from mirrorl.types import Problem

RewardFn = Callable[[str, Problem], "float | None"]


def chain_sum_reward(response: str, problem: Problem) -> float:
    """1.0 when the built-in task's final answer is right, else 0.0.

    >>> from mirrorl.types import Problem
    >>> chain_sum_reward("a:4 b:4+5=9 answer:9", Problem(id="x", prompt="a=4 b=5. sum a-b?", answer="9"))
    1.0
    """
    return float(tasks.verify(response, problem.answer))


REWARDS: dict[str, RewardFn] = {"chain_sum": chain_sum_reward, "math": math_problem_reward, "code": code_reward}


def get_reward(name: str) -> RewardFn:
    """A registered reward, or 'package.module:function' imported from the user's code."""
    if name in REWARDS:
        return REWARDS[name]
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(f"rl.reward={name!r}: not a registered reward ({', '.join(REWARDS)}) nor 'module:function'")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"rl.reward={name!r}: cannot import it ({err})") from None
    if not callable(function):
        raise ValueError(f"rl.reward={name!r}: {attr} is not callable")
    return function
