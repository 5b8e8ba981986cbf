"""Held-out evaluation: pass@1 averaged over n samples, greedy accuracy, mean response length.

pass@1 (averaged) is the fraction of correct responses over n samples per problem at the
evaluation temperature, the protocol of the k1.5 report's RL curves; greedy accuracy decodes
once at temperature 0. Mean response length counts generated tokens (EOS included). A response
whose reward function returned None counts as wrong here and is reported in `unscored`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mirrorl.config import EvalConfig, SamplingConfig
from mirrorl.data.encode import encode_prompt
from mirrorl.rewards.registry import RewardFn
from mirrorl.rollout.engine import Completion, Engine, Request
from mirrorl.types import Problem


@dataclass
class EvalResult:
    pass1: float  # mean accuracy over num_samples samples per problem
    greedy_accuracy: float | None
    mean_tokens: float  # over the sampled responses
    num_problems: int
    num_samples: int
    unscored: int
    pass1_by_difficulty: dict[str, float]

    def as_dict(self) -> dict:
        return asdict(self)


def _accuracy(
    outs: Sequence[Completion], problems: Sequence[Problem], tokenizer: PreTrainedTokenizerBase, reward_fn: RewardFn
) -> tuple[list[bool], int]:
    """Decode each response and score it; a None reward counts as wrong and as unscored."""
    verdicts, unscored = [], 0
    for out, problem in zip(outs, problems):
        value = reward_fn(tokenizer.decode(out.token_ids, skip_special_tokens=True), problem)
        unscored += value is None
        verdicts.append(value is not None and value >= 1.0)
    return verdicts, unscored


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    reward_fn: RewardFn,
    cfg: EvalConfig,
    sampling: SamplingConfig,
    use_chat_template: bool,
    seed: int,
) -> EvalResult:
    """Evaluate `model` on `problems` with the protocol described in the module docstring."""
    prompts = [encode_prompt(tokenizer, p.prompt, use_chat_template) for p in problems]
    temperature = sampling.temperature if cfg.temperature is None else cfg.temperature
    params = sampling.model_copy(update={"temperature": temperature})
    repeated = [p for p in prompts for _ in range(cfg.num_samples)]
    targets = [p for p in problems for _ in range(cfg.num_samples)]
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    outs = engine.generate([Request(p) for p in repeated], params, seed)
    verdicts, unscored = _accuracy(outs, targets, tokenizer, reward_fn)
    by_difficulty: dict[str, list[bool]] = defaultdict(list)
    for problem, verdict in zip(targets, verdicts):
        by_difficulty[str(problem.difficulty)].append(verdict)
    greedy = None
    if cfg.greedy:
        greedy_outs = engine.generate([Request(p) for p in prompts], params.model_copy(update={"temperature": 0.0}), seed)
        greedy_verdicts, greedy_unscored = _accuracy(greedy_outs, problems, tokenizer, reward_fn)
        greedy, unscored = sum(greedy_verdicts) / len(problems), unscored + greedy_unscored
    return EvalResult(
        pass1=sum(verdicts) / len(verdicts),
        greedy_accuracy=greedy,
        mean_tokens=sum(len(o.token_ids) for o in outs) / len(outs),
        num_problems=len(problems),
        num_samples=cfg.num_samples,
        unscored=unscored,
        pass1_by_difficulty={k: sum(v) / len(v) for k, v in sorted(by_difficulty.items())},
    )
