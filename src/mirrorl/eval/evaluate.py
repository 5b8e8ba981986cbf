"""Held-out evaluation: pass@1 averaged over n samples, pass@k, maj@k, greedy accuracy, lengths.

pass@1 (averaged) is the fraction of correct responses over n samples per problem at the
evaluation temperature, the protocol of the k1.5 report's RL curves; greedy accuracy decodes
once at temperature 0. Mean response length counts generated tokens (EOS included); tokens per
correct answer is all sampled tokens over the correct sampled responses (None when none is), the
cost side of the long2short comparison.

pass@k, for each asked k <= n, is the unbiased estimator of Chen et al. 2021
(`mirrorl.algo.pass_at_k`) averaged over problems. maj@k needs an answer extractor (for a registered
verifier, `mirrorl.rewards.registry.answer_extractor`): each problem's first k sampled responses vote
with their extracted answers (exact strings; no answer, no vote; a tie goes to the answer seen
first), and the problem is right when a response carrying the winning answer was scored correct,
wrong when nobody voted. Without an extractor maj@k is not reported.

Responses go through the same guarded batch reward as in RL. One the reward could not score (it
returned None or raised) is left out of every accuracy, never counted as wrong, and reported in
`unscored`; when not one response could be scored, evaluation fails with a one-line error. For
pass@k, a problem's n and c count only its scored samples, and a problem with fewer than k scored
samples is left out of that k's mean; so pass@k["1"] weighs problems equally while `pass1` weighs
scored samples equally (the two agree when all are scored). For maj@k an unscored response still
votes; a problem whose winning answer has only unscored responses is left out of the mean. A k no
problem qualifies for is left out of the dict.

The samples themselves come back as `EvalResult.records`, one per response, with the fields of
RL's rollout logs that apply (`mirrorl.train.rollout_log`: verl's `input`, `output`, `gts`, `score`,
`step`, then `problem`, `sample` (its index among the n), `greedy`, `correct` (None: unscored),
`extracted` (the extracted answer; None: none found or no extractor), `tokens`, `finish_reason`,
`difficulty`); `mirrorl eval` writes them next to its summary.

Does not: compare answers for equivalence when voting ("1/2" and "0.5" split their votes); vote on
the greedy responses; pass@k for k > n (a ValueError).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from mirrorl.algo.pass_at_k import check_k, majority_vote, pass_at_k
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
    pass_at_k: dict[str, float] = field(default_factory=dict)  # "k" -> mean unbiased pass@k (module docstring)
    maj_at_k: dict[str, float] = field(default_factory=dict)  # "k" -> majority-vote accuracy; empty: no extractor
    tokens_per_correct: float | None = None  # sampled tokens / correct sampled responses; None: none correct
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


def _mean(values: Sequence[float | bool | None]) -> float | None:
    known = [float(value) for value in values if value is not None]
    return sum(known) / len(known) if known else None


def _scored_pass_at_k(verdicts: Sequence[bool | None], k: int) -> float | None:
    """pass@k of one problem over its scored samples only; None when fewer than k were scored."""
    scored = [verdict for verdict in verdicts if verdict is not None]
    return pass_at_k(len(scored), sum(scored), k) if len(scored) >= k else None


def tally(sampled: Sequence[float | None], targets: Sequence[Problem], num_samples: int, mean_tokens: float,
          greedy: Sequence[float | None] | None = None, *, ks: Sequence[int] = (1,),
          extracted: Sequence[str | None] | None = None) -> EvalResult:
    """The result from the rewards of the sampled responses (`targets[i]` is the problem of
    `sampled[i]`, num_samples per problem in order), of the greedy ones (one per problem, or None),
    and the answers extracted from the sampled responses (None: maj@k is not reported)."""
    by_difficulty: dict[str, list[float | None]] = defaultdict(list)
    for problem, value in zip(targets, sampled, strict=True):
        by_difficulty[str(problem.difficulty)].append(value)
    per_difficulty = {key: _accuracy(values) for key, values in sorted(by_difficulty.items())}
    pass1 = _accuracy(sampled)
    verdicts = [None if value is None else value >= 1.0 for value in sampled]
    starts = range(0, len(sampled), num_samples)  # each problem's first sample
    pass_k: dict[str, float | None] = {}
    maj_k: dict[str, float | None] = {}
    for k in dict.fromkeys(ks):
        check_k(k, num_samples)
        pass_k[str(k)] = _mean([_scored_pass_at_k(verdicts[i : i + num_samples], k) for i in starts])
        if extracted is not None:
            maj_k[str(k)] = _mean([majority_vote(extracted[i : i + k], verdicts[i : i + k]) for i in starts])
    num_correct = sum(verdict is True for verdict in verdicts)
    return EvalResult(
        pass1=0.0 if pass1 is None else pass1,
        greedy_accuracy=None if greedy is None else _accuracy(greedy),
        mean_tokens=mean_tokens,
        num_problems=len(targets) // num_samples,
        num_samples=num_samples,
        unscored=sum(value is None for value in [*sampled, *(greedy or [])]),
        pass1_by_difficulty={key: value for key, value in per_difficulty.items() if value is not None},
        pass_at_k={key: value for key, value in pass_k.items() if value is not None},
        maj_at_k={key: value for key, value in maj_k.items() if value is not None},
        tokens_per_correct=mean_tokens * len(sampled) / num_correct if num_correct else None,
    )


def evaluate(generator: Generator, tokenizer: PreTrainedTokenizerBase, problems: Sequence[Problem],
             reward: GuardedReward, params: SamplingParams, num_samples: int, greedy: bool, use_chat_template: bool,
             seed: int, *, ks: Sequence[int] = (1,),
             extract: Callable[[str, Problem], str | None] | None = None) -> EvalResult:
    """Evaluate the generator's policy on `problems` (see the module docstring); sampling with `params`,
    pass@k and maj@k for each k of `ks` (each <= num_samples), maj@k and the records' answers by `extract`."""
    for k in ks:
        check_k(k, num_samples)  # before any sampling
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
                "extracted": None if extract is None else extract(text, problem),
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
    answers = [record["extracted"] for record in records if not record["greedy"]] if extract else None
    result = tally(sampled.values, targets, num_samples, sum(len(o.token_ids) for o in outs) / len(outs),
                   greedy_scores.values if greedy_scores else None, ks=ks, extracted=answers)
    errors = sampled.errors + (greedy_scores.errors if greedy_scores else [])
    result.first_reward_error = errors[0] if errors else None
    result.records = records
    return result
