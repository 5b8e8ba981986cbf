"""Pieces of the RL loop on hand-made samples: scoring drops unscorable samples, group success, length reward."""

from mirrorl.config import LengthPenaltyConfig, MirrorDescentConfig
from mirrorl.rewards.batch import GuardedReward, per_sample
from mirrorl.train.rl import add_length_rewards, group_success, score
from mirrorl.types import Problem, Sample


def _sample(group: int, text: str, length: int, problem: int = 0, reason: str = "stop") -> Sample:
    return Sample(problem_index=problem, prompt_ids=[1], response_ids=[5] * length, finish_reason=reason, text=text,
                  group_id=group)


def test_score_drops_samples_the_scorer_could_not_judge():
    problems = [Problem(id="p", prompt="q", answer="4")]
    samples = [_sample(0, "answer:4", 3), _sample(0, "answer:5", 3), _sample(0, "crash", 3)]
    reward = per_sample(lambda text, problem: None if text == "crash" else float(text.endswith(problem.answer)))
    scored = score(samples, problems, GuardedReward(reward))
    assert [(s.text, s.reward, s.correct) for s in scored.samples] == [("answer:4", 1.0, True),
                                                                         ("answer:5", 0.0, False)]
    assert scored.errors == []  # None is "could not score", not an error raised


def test_repeat_penalty_lowers_the_reward_of_looping_responses_only():
    problems = [Problem(id="p", prompt="q", answer="4")]
    samples = [_sample(0, "answer:4", 3, reason="repeat"), _sample(0, "answer:4", 3),
               _sample(0, "x", 3, reason="repeat")]
    reward = GuardedReward(per_sample(lambda text, problem: float(text == "answer:4")))
    kept = score(samples, problems, reward, repeat_penalty=0.25).samples
    assert [(s.reward, s.correct) for s in kept] == [(0.75, True), (1.0, True), (-0.25, False)]


def test_group_success_and_weighted_length_reward():
    # two draws of the same problem 3 are two groups
    samples = [_sample(0, "", 10, 3), _sample(0, "", 30, 3), _sample(1, "", 7, 3), _sample(1, "", 7, 3)]
    for sample, correct in zip(samples, [True, False, True, True]):
        sample.correct = correct
    assert group_success(samples) == {0: (3, 0.5), 1: (3, 1.0)}
    cfg = MirrorDescentConfig(length_penalty=LengthPenaltyConfig(weight=0.4, warmup_iterations=3))
    assert add_length_rewards(samples, cfg, iteration=2) == 0.0  # still warming up
    assert [s.length_reward for s in samples] == [0.0] * 4
    assert add_length_rewards(samples, cfg, iteration=3) == 0.4
    # group 0: lengths 10 (correct, lambda 0.5) and 30 (wrong, lambda -0.5); group 1: equal lengths -> 0
    assert [s.length_reward for s in samples] == [0.2, -0.2, 0.0, 0.0]
