"""Problem samplers: epoch coverage, resume, curriculum phases, prioritized frequencies."""

import json
import math

import numpy as np
import pytest

from mirrorl.data.samplers import CurriculumSampler, PrioritizedSampler, UniformSampler


def test_uniform_covers_each_problem_once_per_epoch_across_boundaries():
    sampler = UniformSampler(num_problems=10, seed=3)
    drawn = [i for it in range(5) for i in sampler.sample(4, it)]  # 20 draws = 2 epochs, batches straddle
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:]) == list(range(10))


@pytest.mark.parametrize(
    "make",
    [
        lambda: UniformSampler(num_problems=7, seed=1),
        lambda: CurriculumSampler([1, 2, 3, 4, 5, 1, 5], switch_iteration=2, hard_min_difficulty=3, seed=1),
        lambda: PrioritizedSampler(num_problems=7, seed=1, ema=0.5),
    ],
)
def test_state_dict_round_trip_continues_identically(make):
    original = make()
    for it in range(3):
        original.update(original.sample(3, it), [0.5, 1.0, 0.0])
    state = json.loads(json.dumps(original.state_dict()))  # must survive JSON
    resumed = make()
    resumed.load_state_dict(state)
    for it in range(3, 8):
        a, b = original.sample(5, it), resumed.sample(5, it)
        assert a == b
        original.update(a, [0.2] * 5)
        resumed.update(b, [0.2] * 5)


def test_curriculum_phases_and_empty_pools():
    difficulties = [1, 1, 2, 4, 5]
    easy_first = CurriculumSampler(difficulties, switch_iteration=2, hard_min_difficulty=4, seed=0)
    assert set(easy_first.sample(6, 0) + easy_first.sample(6, 1)) == {0, 1, 2}
    assert set(easy_first.sample(6, 2)) == {3, 4}
    all_first = CurriculumSampler(difficulties, switch_iteration=1, hard_min_difficulty=4, first_phase="all", seed=0)
    assert sorted(all_first.sample(5, 0)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="no problem has difficulty >= sampler.hard_min_difficulty=9"):
        CurriculumSampler(difficulties, switch_iteration=1, hard_min_difficulty=9)
    with pytest.raises(ValueError, match="no problem has difficulty < sampler.hard_min_difficulty=0"):
        CurriculumSampler(difficulties, switch_iteration=1, hard_min_difficulty=0)


def test_prioritized_frequencies_follow_one_minus_success():
    sampler = PrioritizedSampler(num_problems=4, seed=0)
    sampler.success_rates = np.array([0.0, 0.5, 0.75, 1.0])
    # weights 1, 0.5, 0.25, 0 -> probabilities 4/7, 2/7, 1/7, 0
    expected = np.array([4, 2, 1, 0]) / 7
    draws = 70_000
    counts = np.bincount(sampler.sample(draws, 0), minlength=4)
    # binomial standard deviation sqrt(n p (1-p)) <= 131 here; allow 5 sigma
    for count, p in zip(counts, expected):
        assert abs(count - draws * p) <= 5 * math.sqrt(draws * p * (1 - p)) + 1e-9
    assert counts[3] == 0


def test_prioritized_updates_running_mean_and_ema():
    running = PrioritizedSampler(num_problems=2, seed=0, initial_success=0.5)
    running.update([0, 0, 0], [1.0, 0.0, 0.5])  # mean of 1, 0, 0.5 (the prior is replaced) = 0.5
    running.update([1], [0.25])
    assert running.success_rates.tolist() == [0.5, 0.25]
    ema = PrioritizedSampler(num_problems=1, seed=0, initial_success=0.0, ema=0.5)
    ema.update([0], [1.0])  # 0 + 0.5 * (1 - 0) = 0.5
    ema.update([0], [1.0])  # 0.5 + 0.5 * 0.5 = 0.75
    assert ema.success_rates.tolist() == [0.75]
    floor = PrioritizedSampler(num_problems=2, seed=0, min_weight=0.1)
    floor.success_rates = np.array([1.0, 1.0])
    assert floor.probabilities().tolist() == [0.5, 0.5]
    solved = PrioritizedSampler(num_problems=2, seed=0)
    solved.success_rates = np.array([1.0, 1.0])  # all weights 0 -> uniform
    assert solved.probabilities().tolist() == [0.5, 0.5]
