"""Reward functions by name: the built-in verifiers, or any user function by import path.

A reward function takes (response text, problem) and returns a float, or None when the response
could not be scored because the scorer itself failed (a crashed sandbox, a timed-out verifier).
None is never turned into a reward of 0: the loop drops that sample and counts it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from mirrorl.config import RewardsConfig
from mirrorl.data import tasks
from mirrorl.rewards.math_reward import MathProblemReward
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


REWARDS: dict[str, RewardFn] = {"chain_sum": chain_sum_reward, "code": code_reward}


def _math(rewards: RewardsConfig) -> RewardFn:
    return MathProblemReward(rewards.math)


def _cot_rm(rewards: RewardsConfig) -> RewardFn:
    from mirrorl.rewards.reward_models.cot import CoTRewardModel

    if rewards.cot_rm.path is None:
        raise ValueError("rl.reward=cot_rm needs rewards.cot_rm.path=DIR, a causal LM that ends with a JSON verdict")
    return CoTRewardModel(rewards.cot_rm)


def _value_rm(rewards: RewardsConfig) -> RewardFn:
    from mirrorl.rewards.reward_models.value_head import ValueHeadReward

    if rewards.value_rm.path is None:
        raise ValueError("rl.reward=value_rm needs rewards.value_rm.path=DIR, e.g. the output of `mirrorl train-rm`")
    return ValueHeadReward(rewards.value_rm)


# Rewards built from their config section (`rewards.*`); models and workers start on the first call.
REWARD_MODELS: dict[str, Callable[[RewardsConfig], RewardFn]] = {
    "math": _math, "cot_rm": _cot_rm, "value_rm": _value_rm,
}


def get_reward(name: str, rewards: RewardsConfig | None = None) -> RewardFn:
    """A registered reward, a reward model set up by `rewards` (None: defaults), or 'package.module:function'."""
    if name in REWARDS:
        return REWARDS[name]
    if name in REWARD_MODELS:
        return REWARD_MODELS[name](rewards or RewardsConfig())
    module_name, sep, attr = name.partition(":")
    if not sep:
        known = ", ".join([*REWARDS, *REWARD_MODELS])
        raise ValueError(f"rl.reward={name!r}: not a registered reward ({known}) nor 'module:function'")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"rl.reward={name!r}: cannot import it ({err})") from None
    if not callable(function):
        raise ValueError(f"rl.reward={name!r}: {attr} is not callable")
    return function
