"""Repeat detection on text, and the partial-rollout buffer across iterations."""

import random

import torch

from mirrorl.config import ModelConfig, RepeatConfig, SamplingConfig
from mirrorl.data.tasks import make_split
from mirrorl.models import build_tiny
from mirrorl.rollout.engine import Engine
from mirrorl.rollout.partial import PartialRollouts, rollout_metrics
from mirrorl.rollout.repeat import advance, is_repeating, tail_runs
from mirrorl.types import Completion, GenerateResult

RULE = SamplingConfig(repeat=RepeatConfig(max_period=16, min_repeats=3, min_span=12)).params().repeat
DEFAULT_RULE = SamplingConfig().params().repeat


def test_repeat_fires_on_looping_text_and_not_on_normal_text():
    encode = lambda text: [ord(c) for c in text]  # noqa: E731
    assert is_repeating(encode("a=3 b=5:3+5=8 c=9:" + "8+9=17 " * 3), RULE)
    assert is_repeating(encode("so " + "wait " * 5), RULE)
    assert not is_repeating(encode("so " + "wait " * 2), RULE)  # two copies: not yet a loop
    assert not is_repeating(encode("ok." + "." * 8), RULE)  # eleven dots: shorter than min_span
    for problem in make_split(200, seed=4):  # the generated warm-up traces never loop
        assert not is_repeating(encode(problem.solution), DEFAULT_RULE)


def test_incremental_runs_equal_runs_from_scratch():
    rng = random.Random(0)
    for _ in range(20):
        tokens = [rng.choice([1, 2, 3]) for _ in range(40)]
        history = torch.zeros(1, 64, dtype=torch.long)
        runs = torch.zeros(1, 8, dtype=torch.long)
        for n, token in enumerate(tokens):
            runs = advance(runs, history, torch.tensor([n]), torch.tensor([token]))
            history[0, n] = token
            assert runs[0].tolist() == tail_runs(tokens[: n + 1], 8).tolist()


class ScriptedGenerator:
    """A `Generator` that finishes each request after a random number of tokens: drives the buffer without a model."""

    def __init__(self, seed: int) -> None:
        self.rng, self.version = random.Random(seed), 0

    def update_weights(self, version, state):
        self.version = version

    def generate(self, requests, params, seed):
        continued = [bool(request.prefix_ids) for request in requests]
        assert continued == sorted(continued, reverse=True)  # continuations are queued before new problems
        out = []
        for request in requests:
            length = self.rng.randint(1, 30)
            room = params.max_new_tokens - len(request.prefix_ids)
            n = min(length, request.budget or room, room)
            reason = ("budget" if n == request.budget and n < min(length, room)
                      else ("stop" if n == length else "length"))
            out.append(Completion([7] * n, [-0.5] * n, reason))
        return GenerateResult(out, self.version, new_tokens=sum(len(c.token_ids) for c in out), idle_fraction=0.0)


def test_buffer_never_loses_or_duplicates_a_trajectory():
    params = SamplingConfig(max_new_tokens=25).params()
    buffer = PartialRollouts(group_size=4, segment_budget=6)
    generator = ScriptedGenerator(seed=1)
    started, trained = 0, []
    for iteration in range(30):
        for _ in range(3 if iteration < 20 else 0):  # 3 new problems per iteration, then drain
            buffer.add(problem_index=started % 5, prompt_ids=[1, 2])
            started += 1
        if iteration == 10:  # a saved and restored buffer carries on identically
            restored = PartialRollouts(group_size=4, segment_budget=6)
            restored.load_state_dict(buffer.state_dict())
            buffer = restored
        generator.update_weights(iteration, {})
        step = buffer.step(generator, params, seed=iteration)
        ready = step.groups
        assert len(buffer.unfinished()) <= 3 * 4 * -(-25 // 6)  # a trajectory lives at most ceil(25 / 6) iterations
        metrics = rollout_metrics(step, buffer, iteration)
        assert 0.0 <= metrics["off_policy_token_fraction"] <= 1.0
        for group in ready:
            assert len(group) == 4 and all(t.finish_reason in {"stop", "length"} for t in group)
            for t in group:
                assert len(t.response_ids) == len(t.logprobs) == len(t.versions) <= 25
                assert t.versions == sorted(t.versions) and t.segments == len(set(t.versions))
            trained.append(group[0].group_id)
    assert not buffer.groups  # everything started has come out ...
    assert sorted(trained) == list(range(started))  # ... exactly once
    assert started > 10


def test_partial_rollouts_on_a_model_match_full_rollouts_under_greedy():
    model, tokenizer = build_tiny(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), 0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.mul_(15)
    params = SamplingConfig(temperature=0, max_new_tokens=20, batch_size=8, repeat={"enabled": False},
                            stop_token_ids=[tokenizer.convert_tokens_to_ids(c) for c in "ab"]).params()
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    results = {}
    for budget in (0, 3):
        buffer = PartialRollouts(group_size=2, segment_budget=budget)
        for index in range(6):
            buffer.add(index, tokenizer.encode(f"q{index}?"))
        done = []
        for iteration in range(10):
            engine.update_weights(iteration, model.state_dict())
            done += buffer.step(engine, params, seed=iteration).groups
        results[budget] = sorted((t.problem_index, t.response_ids, t.finish_reason) for g in done for t in g)
        assert len(results[budget]) == 12
    assert results[0] == results[3]
