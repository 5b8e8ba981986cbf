"""Rewards by name: the built-in verifiers, the reward models, or any user function by import path.

Every reward comes out batch-first (`mirrorl.types.BatchReward`): `(responses, problems) ->
list[float | None]`, None when the scorer itself failed (a crashed sandbox, a timed-out verifier).
None is never turned into a reward of 0: the caller drops that sample and counts it. A user's
`package.module:name` is a function of one `(response, problem)`, lifted by `per_sample`, or a
batch reward (a `BatchFirst`: a reward model object, or a function decorated with `batched`).

Building a reward checks what it needs before any work: `code` probes bubblewrap and raises the
sandbox's one-line SandboxUnavailable (a ValueError) where it cannot run, so `mirrorl rl` stops
before its first iteration; `code_unprotected` is the explicit choice to run the programs without
bubblewrap (sandbox backend "none": rlimits and cgroups only, no filesystem or network isolation).

`answer_extractor` gives, for a verifier reward, the function that finds a response's final answer
the way that verifier does (the answer string only, nothing is compared): evaluation records it and
votes with it (maj@k). Rewards without an answer to extract (code, reward models, user functions)
have none.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from mirrorl.config import MathRewardConfig, RewardsConfig
from mirrorl.data import tasks
from mirrorl.rewards.answer_extraction import FINDERS
from mirrorl.rewards.batch import BatchFirst, per_sample
from mirrorl.rewards.math_reward import MathProblemReward
from mirrorl.rewards.sandbox import CodeReward
from mirrorl.types import BatchReward, Problem


def chain_sum_reward(response: str, problem: Problem) -> float:
    """1.0 when the built-in task's final answer is right, else 0.0.

    >>> from mirrorl.types import Problem
    >>> chain_sum_reward("a:4 b:4+5=9 answer:9", Problem(id="x", prompt="a=4 b=5. sum a-b?", answer="9"))
    1.0
    """
    return float(tasks.verify(response, problem.answer))


def _cot_rm(rewards: RewardsConfig) -> BatchReward:
    from mirrorl.models import load_policy, pick_device, pick_dtype
    from mirrorl.rewards.reward_models.cot import CoTRewardModel
    from mirrorl.rollout.engine import Engine

    cfg = rewards.cot_rm
    if cfg.path is None:
        raise ValueError("rl.reward=cot_rm needs rewards.cot_rm.path=DIR, a causal LM that ends with a JSON verdict")
    device = pick_device(cfg.device)
    model, tokenizer = load_policy(cfg.path, device, pick_dtype(cfg.dtype, device))
    window = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return CoTRewardModel(cfg, Engine(model.eval(), tokenizer.eos_token_id, tokenizer.pad_token_id), tokenizer, window)


def _value_rm(rewards: RewardsConfig) -> BatchReward:
    from mirrorl.rewards.reward_models.value_head import ValueHeadReward

    if rewards.value_rm.path is None:
        raise ValueError("rl.reward=value_rm needs rewards.value_rm.path=DIR, e.g. the output of `mirrorl train-rm`")
    return ValueHeadReward(rewards.value_rm)


# name -> the reward built from the `rewards.*` sections; the math verifier's workers start on its first call,
# the code sandbox is probed when its reward is built
REWARDS: dict[str, Callable[[RewardsConfig], BatchReward]] = {
    "chain_sum": lambda _: per_sample(chain_sum_reward),
    "code": lambda _: per_sample(CodeReward("bubblewrap")),
    "code_unprotected": lambda _: per_sample(CodeReward("none")),
    "math": lambda rewards: MathProblemReward(rewards.math),
    "cot_rm": _cot_rm,
    "value_rm": _value_rm,
}


def get_reward(name: str, rewards: RewardsConfig | None = None) -> BatchReward:
    """A registered reward set up by `rewards` (None: defaults), or the reward at 'package.module:name'."""
    if name in REWARDS:
        return REWARDS[name](rewards or RewardsConfig())
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(f"rl.reward={name!r}: not a registered reward ({', '.join(REWARDS)}) nor 'module:function'")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"rl.reward={name!r}: cannot import it ({err})") from None
    if not callable(function):
        raise ValueError(f"rl.reward={name!r}: {attr} is not callable")
    return function if isinstance(function, BatchFirst) else per_sample(function)


AnswerExtractor = Callable[[str, Problem], str | None]  # (response, problem) -> its final answer, None: none found


def _chain_sum_answer(response: str, problem: Problem) -> str | None:
    return tasks.extract_answer(response)


def _math_extractor(config: MathRewardConfig) -> AnswerExtractor:
    """The math verifier's answer finding: its response strategies in order, over the same last
    `max_response_chars` characters, first answer found wins.

    Two departures, as math-verify's parser runs only in the verifier's workers (it can hang): the
    'math_verify' strategy is skipped (a response the verifier reads only through math-verify has
    no answer here), and a found answer is taken as is, where the verifier moves on to the next
    strategy when math-verify cannot parse it.
    """
    finders = [FINDERS[name] for name in config.match.response_strategies if name != "math_verify"]
    limit = config.max_response_chars

    def math_answer(response: str, problem: Problem) -> str | None:
        text = response[-limit:]
        for find in finders:
            found = find(text)
            if found is not None:
                return found.text
        return None

    return math_answer


# name -> the answer extractor of that registered reward, built from the `rewards.*` sections
EXTRACTORS: dict[str, Callable[[RewardsConfig], AnswerExtractor]] = {
    "chain_sum": lambda _: _chain_sum_answer,
    "math": lambda rewards: _math_extractor(rewards.math),
}


def answer_extractor(name: str, rewards: RewardsConfig | None = None) -> AnswerExtractor | None:
    """The answer extractor matching the reward `name` (set up by `rewards`; None: defaults), or None
    for a reward without one: code, reward models, user functions ('package.module:name').

    >>> from mirrorl.types import Problem
    >>> problem = Problem(id="x", prompt="q", answer="9")
    >>> answer_extractor("chain_sum")("a:4 b:4+5=9 answer:9", problem)
    '9'
    >>> extract = answer_extractor("math")  # default strategies: final_answer, then math_verify (skipped)
    >>> extract(r"so $x=\\boxed{\\frac{1}{2}}$", problem), extract("The answer is 12. Done", problem)
    ('\\\\frac{1}{2}', '12')
    >>> extract("no answer given", problem) is None, answer_extractor("code") is None
    (True, True)
    """
    return EXTRACTORS[name](rewards or RewardsConfig()) if name in EXTRACTORS else None
