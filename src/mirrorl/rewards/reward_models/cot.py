"""Chain-of-Thought reward model (k1.5 sec. 2.3.5): a causal LM judges a response against the reference.

The judge is prompted with the question, the reference answer and the response (the template of
`CoTRMConfig`, through the tokenizer's chat template when it has one), reasons step by step, and
ends with a JSON verdict such as {"correct": true}. The report measured 98.5% accuracy for its CoT
RM against 84% for a classic value-head RM (`value_head.py`) and used the CoT RM in RL.

Parsing (`parse_verdict`): the verdict is the last JSON object in the judgement that has the
verdict key at its top level (objects without it, nested objects and LaTeX braces in the
reasoning are passed over); its value must be a JSON boolean. Error policy, as for the verifiers:
a judgement that yields no verdict is an error, never a wrong answer. `Verdict.reward` is None
for it, the RL loop drops the sample, and `CoTRewardModel.counts` counts it by kind:
  no_json        no complete JSON object at all (garbage, or cut off inside the object)
  missing_key    JSON objects, but none has the verdict key
  not_bool       the key holds "yes", 1, null, ... instead of true/false
  duplicate_key  the verdict object names the key twice
  unfinished     the judge was stopped (max_new_tokens, repeat detection) before it ended on its own
  too_long       prompt plus max_new_tokens exceed the judge's context window

Batching: all judgements of a call go through the generation engine together, greedy, so a
verdict is a function of (question, reference, response tail); repeats within a call are judged
once and verdicts are kept in an LRU cache.

Does not: train a judge (use an instruction-tuned LM, or one fine-tuned on judgements); sample
several judgements and vote; grade partial credit (the verdict is a boolean).
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mirrorl.config import SamplingConfig
from mirrorl.data.encode import encode_prompt
from mirrorl.models import load_policy, pick_device, pick_dtype
from mirrorl.rewards.reward_models.common import CoTRMConfig, fill_template
from mirrorl.rollout.engine import Engine, Request
from mirrorl.types import Problem

_DUPLICATE = object()  # stands for the value of a key written twice in one object


@dataclass(frozen=True)
class Verdict:
    """One judgement: `correct` is None exactly when `error` names what went wrong."""

    correct: bool | None
    error: str | None = None
    judgement: str = ""  # the judge's text (reasoning and verdict)

    @property
    def reward(self) -> float | None:
        """1.0 correct, 0.0 incorrect, None on error."""
        return None if self.correct is None else float(self.correct)


def parse_verdict(text: str, key: str = "correct") -> Verdict:
    """The verdict in a judgement: the last top-level JSON object holding `key`, whose value is a bool.

    A judgement cut off after an earlier complete verdict is not detected here: the caller checks
    how generation ended (`judge_completion`).

    >>> parse_verdict('1/2 and 0.5 are the same value. {"correct": true} Done.').correct
    True
    >>> parse_verdict('The set {1, 2} has two elements. {"correct": "yes"}').error
    'not_bool'
    """

    def check_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        value = dict(pairs)
        if sum(name == key for name, _ in pairs) > 1:
            value[key] = _DUPLICATE
        return value

    decoder = json.JSONDecoder(object_pairs_hook=check_duplicates)
    found_object, verdict = False, None
    start = text.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):  # not JSON from here (prose, LaTeX, a cut-off object)
            start = text.find("{", start + 1)
            continue
        found_object = True
        if key in value:
            verdict = value
        start = text.find("{", end)  # objects nested in this one are part of it, not candidates
    if verdict is None:
        return Verdict(None, "missing_key" if found_object else "no_json", text)
    if verdict[key] is _DUPLICATE:
        return Verdict(None, "duplicate_key", text)
    if not isinstance(verdict[key], bool):
        return Verdict(None, "not_bool", text)
    return Verdict(verdict[key], None, text)


def judge_completion(text: str, finish_reason: str, key: str, accept_unfinished: bool) -> Verdict:
    """The verdict of one generated judgement, given how its generation ended."""
    if finish_reason != "stop" and not accept_unfinished:
        return Verdict(None, "unfinished", text)
    return parse_verdict(text, key)


class CoTRewardModel:
    """A CoT judge as a reward function: `rm(response, problem)`, or `rm.score_batch([(response, problem), ...])`.

    The judge model is loaded from `config.path` on first use (or given to `from_model`).
    """

    def __init__(self, config: CoTRMConfig) -> None:
        self.config = config
        self.counts: Counter[str] = Counter()  # verdicts returned by outcome / error kind, judged, cache_hits
        self._cache: OrderedDict[tuple[str, str, str], Verdict] = OrderedDict()
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._engine: Engine | None = None

    @classmethod
    def from_model(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   config: CoTRMConfig) -> CoTRewardModel:
        """A judge over an already loaded model (`config.path` is not read)."""
        judge = cls(config)
        judge._attach(model, tokenizer)
        return judge

    def _attach(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)

    def _ready(self) -> tuple[Engine, PreTrainedTokenizerBase]:
        if self._engine is None:
            if self.config.path is None:
                raise ValueError("rewards.cot_rm.path is not set: the CoT reward model needs a judge model directory")
            device = pick_device(self.config.device)
            self._attach(*load_policy(self.config.path, device, pick_dtype(self.config.dtype, device)))
        assert self._engine is not None and self._tokenizer is not None
        return self._engine, self._tokenizer

    def __call__(self, response: str, problem: Problem) -> float | None:
        return self.score_batch([(response, problem)])[0]

    def score_batch(self, items: Sequence[tuple[str, Problem]]) -> list[float | None]:
        """Rewards of (response, problem) pairs, in order: 1.0, 0.0, or None when the judgement failed."""
        return [verdict.reward for verdict in self.judge_batch(items)]

    def judge_batch(self, items: Sequence[tuple[str, Problem]]) -> list[Verdict]:
        """Verdicts of (response, problem) pairs, in order; new ones are judged in one engine call."""
        tail = self.config.max_response_chars
        keys = [(problem.prompt, problem.answer, response[-tail:]) for response, problem in items]
        known = {key: self._cache[key] for key in keys if key in self._cache}
        fresh = [key for key in dict.fromkeys(keys) if key not in known]  # unique, in first-seen order
        known.update(zip(fresh, self._judge(fresh)))
        for key in dict.fromkeys(keys):
            self._remember(key, known[key])
        verdicts = [known[key] for key in keys]
        self.counts["judged"] += len(fresh)
        self.counts["cache_hits"] += len(keys) - len(fresh)
        self.counts.update(v.error or ("correct" if v.correct else "incorrect") for v in verdicts)
        return verdicts

    def _judge(self, keys: list[tuple[str, str, str]]) -> list[Verdict]:
        if not keys:
            return []
        engine, tokenizer = self._ready()
        cfg = self.config
        prompts = [encode_prompt(tokenizer, fill_template(cfg.template, *key), cfg.use_chat_template) for key in keys]
        window = getattr(engine.model.config.get_text_config(), "max_position_embeddings", None)
        fits = [window is None or len(ids) + cfg.max_new_tokens <= window for ids in prompts]
        params = SamplingConfig(temperature=0, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        requests = [Request(ids) for ids, ok in zip(prompts, fits) if ok]
        completions = iter(engine.generate(requests, params, seed=0) if requests else [])
        verdicts = []
        for ok in fits:
            if not ok:
                verdicts.append(Verdict(None, "too_long"))
                continue
            completion = next(completions)
            text = tokenizer.decode(completion.token_ids, skip_special_tokens=True)
            verdicts.append(judge_completion(text, completion.finish_reason, cfg.verdict_key, cfg.accept_unfinished))
        return verdicts

    def _remember(self, key: tuple[str, str, str], verdict: Verdict) -> None:
        if self.config.cache_size == 0:
            return
        self._cache[key] = verdict
        self._cache.move_to_end(key)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
