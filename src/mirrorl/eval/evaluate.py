"""Held-out evaluation: pass@1 averaged over n samples, greedy accuracy, mean response length.

pass@1 (averaged) is the fraction of correct responses over n samples per problem at the
evaluation temperature, the protocol of the k1.5 report's RL curves; greedy accuracy decodes
once at temperature 0. Mean response length counts generated tokens (EOS included).

Responses go through the same guarded batch reward as in RL. One the reward could not score (it
returned None or raised) is left out of every accuracy, never counted as wrong, and reported in
`unscored`; when not one response could be scored, evaluation fails with a one-line error.

The samples themselves come back as `EvalResult.records`, one per response, with the fields of
RL's rollout logs that apply (`mirrorl.train.rollout_log`: verl's `input`, `output`, `gts`, `score`,
`step`, then `problem`, `sample` (its index among the n), `greedy`, `correct` (None: unscored),
`tokens`, `finish_reason`, `difficulty`); `mirrorl eval` writes them next to its summary.

Does not: pass@k for k > 1, majority voting.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from mirrorl.data.encode import encode_prompt
from mirrorl.rewards.batch import GuardedReward, Scores
from mirrorl.types import Completion, Generator, Problem, Request, SamplingParams


@dataclass
class EvalResult:
    pass1: float  # mean accuracy over the scored samples, num_samples per problem
    greedy_accuracy: float | None  # None when not asked for (or none was scored)
    mean_tokens: float  # over the sampled responses
    num_problems: int
    num_samples: int
    unscored: int  # responses (sampled and greedy) the reward could not score
    pass1_by_difficulty: dict[str, float]
    first_reward_error: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)  # the samples (module docstring)

    def as_dict(self) -> dict:
        """The summary (without the samples)."""
        return {key: value for key, value in asdict(self).items() if key != "records"}


def _accuracy(values: Sequence[float | None]) -> float | None:
    """Fraction of the scored values that are correct (>= 1); None when none was scored.

    >>> _accuracy([1.0, 0.0, None, 1.0]), _accuracy([None])
    (0.6666666666666666, None)
    """
    scored = [value >= 1.0 for value in values if value is not None]
    return sum(scored) / len(scored) if scored else None


def tally(sampled: Sequence[float | None], targets: Sequence[Problem], num_samples: int, mean_tokens: float,
          greedy: Sequence[float | None] | None = None) -> EvalResult:
    """The result from the rewards of the sampled responses (`targets[i]` is the problem of
    `sampled[i]`) and of the greedy ones (one per problem, or None)."""
    by_difficulty: dict[str, list[float | None]] = defaultdict(list)
    for problem, value in zip(targets, sampled, strict=True):
        by_difficulty[str(problem.difficulty)].append(value)
    per_difficulty = {key: _accuracy(values) for key, values in sorted(by_difficulty.items())}
    pass1 = _accuracy(sampled)
    return EvalResult(
        pass1=0.0 if pass1 is None else pass1,
        greedy_accuracy=None if greedy is None else _accuracy(greedy),
        mean_tokens=mean_tokens,
        num_problems=len(targets) // num_samples,
        num_samples=num_samples,
        unscored=sum(value is None for value in [*sampled, *(greedy or [])]),
        pass1_by_difficulty={key: value for key, value in per_difficulty.items() if value is not None},
    )


def evaluate(generator: Generator, tokenizer: PreTrainedTokenizerBase, problems: Sequence[Problem],
             reward: GuardedReward, params: SamplingParams, num_samples: int, greedy: bool, use_chat_template: bool,
             seed: int) -> EvalResult:
    """Evaluate the generator's policy on `problems` (see the module docstring); sampling with `params`."""
    prompts = [encode_prompt(tokenizer, p.prompt, use_chat_template) for p in problems]
    targets = [p for p in problems for _ in range(num_samples)]
    outs = generator.generate([Request(p) for p in prompts for _ in range(num_samples)], params, seed).completions

    records: list[dict[str, Any]] = []

    def scores(completions: Sequence[Completion], n: int, greedy: bool) -> Scores:
        """Score `completions`, n per problem in order, and keep their records."""
        texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
        scored = reward(texts, [p for p in problems for _ in range(n)])
        for j, (completion, text, value) in enumerate(zip(completions, texts, scored.values, strict=True)):
            problem = problems[j // n]
            records.append({
                "input": tokenizer.decode(prompts[j // n], skip_special_tokens=True), "output": text,
                "gts": problem.answer, "score": value, "step": 0, "problem": j // n, "sample": j % n,
                "greedy": greedy, "correct": None if value is None else value >= 1.0,
                "tokens": len(completion.token_ids), "finish_reason": completion.finish_reason,
                "difficulty": problem.difficulty,
            })
        return scored

    sampled = scores(outs, num_samples, greedy=False)
    if sampled.num_unscored == len(sampled.values):
        errors = sampled.errors
        cause = f"it raised {len(errors)} times, first: {errors[0]}" if errors else "it returned None for all"
        raise ValueError(f"evaluation: the reward could score none of {len(sampled.values)} responses ({cause})")
    greedy_scores = None
    if greedy:
        greedy_outs = generator.generate([Request(p) for p in prompts], replace(params, temperature=0.0), seed)
        greedy_scores = scores(greedy_outs.completions, 1, greedy=True)
    result = tally(sampled.values, targets, num_samples, sum(len(o.token_ids) for o in outs) / len(outs),
                   greedy_scores.values if greedy_scores else None)
    errors = sampled.errors + (greedy_scores.errors if greedy_scores else [])
    result.first_reward_error = errors[0] if errors else None
    result.records = records
    return result
