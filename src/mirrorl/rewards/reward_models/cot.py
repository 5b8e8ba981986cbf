"""Chain-of-Thought reward model (k1.5 sec. 2.3.5): a causal LM judges a response against the reference.

The judge (any causal LM, decoding through a `mirrorl.types.Generator`) is prompted with the
question, the reference answer and the response (the template of `CoTRMConfig`, through the
tokenizer's chat template when it has one), reasons step by step, and ends with a JSON verdict
such as {"correct": true}. The report measured 98.5% accuracy for its CoT RM against 84% for a
classic value-head RM (`value_head.py`) and used the CoT RM in RL.

Parsing (`parse_verdict`): the verdict is the last JSON object in the judgement that has the
verdict key at its top level (objects without it, nested objects and LaTeX braces in the
reasoning are passed over); its value must be a JSON boolean. Error policy, as for the verifiers:
a judgement that yields no verdict is an error, never a wrong answer. `Verdict.reward` is None
for it, the caller drops the sample, and `CoTRewardModel.counts` counts it by kind:
  no_json        no complete JSON object at all (garbage, or cut off inside the object)
  missing_key    JSON objects, but none has the verdict key
  not_bool       the key holds "yes", 1, null, ... instead of true/false
  duplicate_key  the verdict object names the key twice
  unfinished     the judge was stopped (max_new_tokens, repeat detection) before it ended on its own
  too_long       prompt plus max_new_tokens exceed the judge's context window

Batching: all judgements of a call go through the generator together, greedy, so a
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

from transformers import PreTrainedTokenizerBase

from mirrorl.config import CoTRMConfig, SamplingConfig
from mirrorl.data.encode import encode_prompt
from mirrorl.rewards.batch import BatchFirst
from mirrorl.rewards.reward_models.common import fill_template
from mirrorl.types import Generator, Problem, Request

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


class CoTRewardModel(BatchFirst):
    """A CoT judge as a batch reward: `rm(responses, problems)` -> 1.0, 0.0 or None (no verdict) each.

    `generator` decodes with the judge model's weights; prompts longer than `context_window`
    (prompt plus `max_new_tokens`; None: no limit) are not sent and come back as `too_long`.
    """

    def __init__(self, config: CoTRMConfig, generator: Generator, tokenizer: PreTrainedTokenizerBase,
                 context_window: int | None = None) -> None:
        self.config, self.generator, self.tokenizer, self.context_window = config, generator, tokenizer, context_window
        self.counts: Counter[str] = Counter()  # verdicts returned by outcome / error kind, judged, cache_hits
        self._cache: OrderedDict[tuple[str, str, str], Verdict] = OrderedDict()

    def __call__(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[float | None]:
        return [verdict.reward for verdict in self.judge(responses, problems)]

    def judge(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[Verdict]:
        """Verdicts of the responses to their problems, in order; new ones are judged in one generator call."""
        tail = self.config.max_response_chars
        keys = [(problem.prompt, problem.answer, response[-tail:]) for response, problem in zip(responses, problems)]
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
        cfg, tokenizer, window = self.config, self.tokenizer, self.context_window
        prompts = [encode_prompt(tokenizer, fill_template(cfg.template, *key), cfg.use_chat_template) for key in keys]
        fits = [window is None or len(ids) + cfg.max_new_tokens <= window for ids in prompts]
        params = SamplingConfig(temperature=0, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size).params()
        requests = [Request(ids) for ids, ok in zip(prompts, fits) if ok]
        completions = iter(self.generator.generate(requests, params, seed=0).completions if requests else [])
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
