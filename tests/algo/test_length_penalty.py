"""k1.5 length reward on hand-made groups (sec. 2.3.3)."""

import torch

from mirrorl.algo.length_penalty import length_penalty_weight, length_rewards


def _rewards(lengths, correct, groups):
    return length_rewards(torch.tensor(lengths), torch.tensor(correct), torch.tensor(groups)).tolist()


def test_mixed_group_by_hand():
    # min 10, max 30: lambda = 0.5 - (len - 10) / 20 -> 10: 0.5, 20: 0.0, 30: -0.5, 15: 0.25
    # correct keep lambda; wrong get min(0, lambda): 15 wrong -> 0.0, 30 wrong -> -0.5
    got = _rewards([10, 20, 30, 15, 30], [True, True, True, False, False], [0, 0, 0, 0, 0])
    assert got == [0.5, 0.0, -0.5, 0.0, -0.5]


def test_all_equal_lengths_give_zero():
    assert _rewards([7, 7, 7], [True, False, True], [3, 3, 3]) == [0.0, 0.0, 0.0]


def test_all_wrong_group_is_never_positive():
    # min 4, max 8: lambda 4: 0.5, 6: 0.0, 8: -0.5 -> wrong: 0, 0, -0.5
    assert _rewards([4, 6, 8], [False, False, False], [1, 1, 1]) == [0.0, 0.0, -0.5]


def test_single_member_and_interleaved_groups():
    # group 5 alone -> 0; group 2: lengths 1 and 3 -> 0.5 (correct), -0.5 (wrong);
    # group 9: lengths 2, 6, 4 -> 0.5, -0.5, 0.0 (all correct)
    got = _rewards([1, 2, 100, 3, 6, 4], [True, True, True, False, True, True], [2, 9, 5, 2, 9, 9])
    assert got == [0.5, 0.5, 0.0, -0.5, -0.5, 0.0]


def test_warmup_schedule():
    assert [length_penalty_weight(i, 0.3, 2) for i in range(4)] == [0.0, 0.0, 0.3, 0.3]
