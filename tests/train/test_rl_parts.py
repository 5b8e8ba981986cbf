"""Pieces of the RL loop on hand-made samples: scoring drops unscorable samples, group success, length reward."""

import torch

from mirrorl.config import AlgoConfig, LengthPenaltyConfig
from mirrorl.data.encode import pad_batch
from mirrorl.train.rl import (
    GuardedReward, add_length_rewards, group_success, older_tokens, per_token, score,
)
from mirrorl.types import Problem, Sample


def _sample(group: int, text: str, length: int, problem: int = 0, reason: str = "stop") -> Sample:
    return Sample(problem_index=problem, prompt_ids=[1], response_ids=[5] * length, finish_reason=reason, text=text,
                  group_id=group)


def test_score_drops_samples_the_scorer_could_not_judge():
    problems = [Problem(id="p", prompt="q", answer="4")]
    samples = [_sample(0, "answer:4", 3), _sample(0, "answer:5", 3), _sample(0, "crash", 3)]
    reward = lambda text, problem: None if text == "crash" else float(text.endswith(problem.answer))  # noqa: E731
    kept = score(samples, problems, reward)
    assert [(s.text, s.reward, s.correct) for s in kept] == [("answer:4", 1.0, True), ("answer:5", 0.0, False)]


def test_repeat_penalty_lowers_the_reward_of_looping_responses_only():
    problems = [Problem(id="p", prompt="q", answer="4")]
    samples = [_sample(0, "answer:4", 3, reason="repeat"), _sample(0, "answer:4", 3), _sample(0, "x", 3, reason="repeat")]
    kept = score(samples, problems, lambda text, problem: float(text == "answer:4"), repeat_penalty=0.25)
    assert [(s.reward, s.correct) for s in kept] == [(0.75, True), (1.0, True), (-0.25, False)]


def test_group_success_and_weighted_length_reward():
    # two draws of the same problem 3 are two groups
    samples = [_sample(0, "", 10, 3), _sample(0, "", 30, 3), _sample(1, "", 7, 3), _sample(1, "", 7, 3)]
    for sample, correct in zip(samples, [True, False, True, True]):
        sample.correct = correct
    assert group_success(samples) == {0: (3, 0.5), 1: (3, 1.0)}
    cfg = AlgoConfig(length_penalty=LengthPenaltyConfig(weight=0.4, warmup_iterations=3))
    assert add_length_rewards(samples, cfg, iteration=2) == 0.0  # still warming up
    assert [s.length_reward for s in samples] == [0.0] * 4
    assert add_length_rewards(samples, cfg, iteration=3) == 0.4
    # group 0: lengths 10 (correct, lambda 0.5) and 30 (wrong, lambda -0.5); group 1: equal lengths -> 0
    assert [s.length_reward for s in samples] == [0.2, -0.2, 0.0, 0.0]


def test_a_raising_reward_drops_the_sample_and_is_counted():
    from mirrorl.train.rl import GuardedReward

    problems = [Problem(id="p", prompt="q", answer="4")]

    def reward(text, problem):
        if text == "boom":
            raise ValueError("no such field\nsecond line")
        return float(text == "answer:4")

    guarded = GuardedReward(reward)
    kept = score([_sample(0, "answer:4", 3), _sample(0, "boom", 3), _sample(0, "boom", 3)], problems, guarded)
    assert [(s.text, s.reward) for s in kept] == [("answer:4", 1.0)]
    assert guarded.take_errors() == ["ValueError: no such field"] * 2  # first line only
    assert guarded.take_errors() == []  # counted per iteration


class BatchJudge:
    """A reward with a batch call, like the reward models: counts how often each path is used."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.batch_calls, self.single_calls = fail, 0, 0

    def __call__(self, text, problem):
        self.single_calls += 1
        return 1.0

    def score_batch(self, items):
        self.batch_calls += 1
        if self.fail:
            raise RuntimeError("judge crashed\nsecond line")
        return [float(text == "answer:4") for text, _ in items]


def test_score_judges_a_batch_in_one_call_and_a_crashed_batch_drops_every_sample():
    problems = [Problem(id="p", prompt="q", answer="4")]
    judge = BatchJudge()
    kept = score([_sample(0, "answer:4", 3), _sample(0, "answer:5", 3)], problems, GuardedReward(judge))
    assert [s.reward for s in kept] == [1.0, 0.0]
    assert (judge.batch_calls, judge.single_calls) == (1, 0)
    guarded = GuardedReward(BatchJudge(fail=True))
    assert score([_sample(0, "answer:4", 3), _sample(0, "x", 3)], problems, guarded) == []
    assert guarded.take_errors() == ["RuntimeError: judge crashed"] * 2


def test_newest_only_training_masks_the_tokens_of_earlier_iterations():
    continued = Sample(problem_index=0, prompt_ids=[1, 2], response_ids=[5, 6, 7, 8], finish_reason="stop",
                       versions=[3, 3, 4, 4])
    fresh = Sample(problem_index=1, prompt_ids=[1], response_ids=[9, 9], finish_reason="stop", versions=[4, 4])
    batch = pad_batch([continued.prompt_ids, fresh.prompt_ids], [continued.response_ids, fresh.response_ids], 0,
                      torch.device("cpu"))
    batch.response_mask *= 1 - older_tokens(batch, [continued, fresh], iteration=4)
    # position t predicts token t+1: the continued row's responses sit at positions 1..4, the fresh row's at 0..1
    assert batch.response_mask.tolist() == [[0, 0, 0, 1, 1], [1, 1, 0, 0, 0]]


def test_per_token_values_sit_under_their_tokens_and_older_tokens_mark_earlier_segments():
    continued = Sample(problem_index=0, prompt_ids=[1, 2], response_ids=[5, 6, 7], finish_reason="stop",
                       versions=[3, 4, 4], logprobs=[-0.1, -0.2, -0.3])
    fresh = Sample(problem_index=1, prompt_ids=[1], response_ids=[9], finish_reason="stop", versions=[4],
                   logprobs=[-0.4])
    batch = pad_batch([continued.prompt_ids, fresh.prompt_ids], [continued.response_ids, fresh.response_ids], 0,
                      torch.device("cpu"))
    behaviour = per_token(batch, [continued, fresh], [continued.logprobs, fresh.logprobs])
    stale = older_tokens(batch, [continued, fresh], iteration=4)
    assert torch.allclose(behaviour, torch.tensor([[0.0, -0.1, -0.2, -0.3], [-0.4, 0.0, 0.0, 0.0]]))
    assert stale.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]


def test_reference_logprobs_from_the_engine_equal_a_forward_pass():
    from mirrorl.config import SamplingConfig
    from mirrorl.models import TinyModelSpec, build_tiny
    from mirrorl.rollout.engine import Engine, Request
    from mirrorl.train.rl import reference_logprobs

    model, tokenizer = build_tiny(TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), 0)
    prompts = [tokenizer.encode(text) for text in ("a=1 b=2.", "a=3.", "a=9 b=9 c=9.")]
    out = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id).generate(
        [Request(p) for p in prompts], SamplingConfig(max_new_tokens=12, repeat={"enabled": False}), seed=0)
    samples = [Sample(problem_index=0, prompt_ids=p, response_ids=c.token_ids, finish_reason=c.finish_reason,
                      versions=[5] * len(c.token_ids), logprobs=c.logprobs) for p, c in zip(prompts, out)]
    batch = pad_batch([s.prompt_ids for s in samples], [s.response_ids for s in samples], 0, torch.device("cpu"))
    from_engine = reference_logprobs(model, batch, samples, iteration=5, chunk_size=16)
    recomputed = reference_logprobs(model, batch, samples, iteration=6, chunk_size=16)  # older tokens: a forward
    assert torch.allclose(from_engine * batch.response_mask, recomputed * batch.response_mask, atol=1e-5)
    assert batch.response_mask.sum() == sum(len(s.response_ids) for s in samples)
