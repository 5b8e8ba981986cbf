"""The one reward path: one-sample functions lifted to batches, and the guard that drops and counts failures."""

import pytest

from mirrorl.rewards.batch import GuardedReward, per_sample
from mirrorl.rewards.registry import get_reward
from mirrorl.types import Problem

PROBLEM = Problem(id="p", prompt="q", answer="4")


def test_a_lifted_function_scores_each_pair_in_order():
    lifted = per_sample(lambda text, problem: float(text == problem.answer))
    assert lifted(["4", "5", "4"], [PROBLEM] * 3) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError):  # responses and problems must pair up
        lifted(["4"], [PROBLEM] * 2)


def test_the_guard_drops_what_raised_keeps_the_rest_and_reports_first_lines():
    def reward(text, problem):
        if text == "boom":
            raise ValueError("no such field\nsecond line")
        return None if text == "unsure" else float(text == "4")

    scores = GuardedReward(per_sample(reward))(["4", "boom", "unsure", "boom", "5"], [PROBLEM] * 5)
    assert scores.values == [1.0, None, None, None, 0.0]
    assert scores.errors == ["ValueError: no such field"] * 2  # one per raising sample, first line only
    assert scores.num_unscored == 3


class BatchJudge:
    """A batch reward like the reward models; counts its calls and can fail on one input."""

    def __init__(self, poison: str | None = None) -> None:
        self.poison, self.calls = poison, 0

    def __call__(self, responses, problems):
        self.calls += 1
        if self.poison in responses:
            raise RuntimeError("judge crashed\nsecond line")
        return [float(text == "4") for text in responses]


def test_a_batch_is_scored_in_one_call_and_a_crashed_batch_costs_only_its_bad_sample():
    judge = BatchJudge()
    assert GuardedReward(judge)(["4", "5"], [PROBLEM] * 2).values == [1.0, 0.0]
    assert judge.calls == 1
    judge = BatchJudge(poison="x")
    scores = GuardedReward(judge)(["4", "x", "5"], [PROBLEM] * 3)
    assert scores.values == [1.0, None, 0.0]
    assert scores.errors == ["RuntimeError: judge crashed"]
    assert judge.calls == 1 + 3  # the batch, then each sample alone


def test_a_reward_returning_the_wrong_number_of_values_is_an_error():
    with pytest.raises(ValueError, match="returned 1 values for 2 responses"):
        GuardedReward(lambda responses, problems: [1.0])(["4", "5"], [PROBLEM] * 2)


def test_registry_rewards_and_user_functions_are_batch_first():
    problem = Problem(id="x", prompt="a=4 b=5. sum a-b?", answer="9")
    assert get_reward("chain_sum")(["a:4 b:4+5=9 answer:9", "answer:8"], [problem] * 2) == [1.0, 0.0]
    user = get_reward("test_batch:exact")  # this module, importable by name under pytest
    assert user(["4", "5"], [PROBLEM] * 2) == [1.0, 0.0]


def exact(response: str, problem: Problem) -> float:
    return float(response == problem.answer)
