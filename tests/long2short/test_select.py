"""Shortest rejection sampling and DPO pairs on hand-made groups of sampled responses."""

from mirrorl.long2short.select import Scored, groups_of, preference_pairs, shortest_correct


def s(tokens: int, correct: bool | None, finish: str = "stop") -> Scored:
    return Scored(f"r{tokens}", tokens, correct, finish)


def test_shortest_correct_skips_wrong_truncated_and_unscored_and_breaks_ties_by_order():
    group = [s(30, True), s(12, False), s(10, True, "length"), s(8, None), s(20, True), s(20, True), s(25, True)]
    # shortest overall (8) is unscored, 10 was cut off, 12 is wrong; 20 twice: the first one sampled
    assert shortest_correct(group) == 4
    assert shortest_correct([s(5, True, "repeat"), s(9, False)]) is None  # a repeat stop did not finish normally
    assert shortest_correct([]) is None


def test_pairs_with_no_correct_response_are_none():
    assert preference_pairs([s(10, False), s(20, False), s(30, True, "length")], 1.5, 8) == []


def test_pairs_when_all_are_correct_keep_only_the_much_longer_ones():
    # positive 10 tokens; 15 >= 1.5 * 10 is a negative, 14 is not; the tie at 10 (index 3) is not the positive
    group = [s(10, True), s(14, True), s(15, True), s(10, True), s(40, True)]
    assert preference_pairs(group, 1.5, 8) == [(0, 2), (0, 4)]
    assert preference_pairs(group, 1.0, 8) == [(0, 1), (0, 2), (0, 3), (0, 4)]  # ratio 1: every other one


def test_pairs_take_wrong_and_truncated_negatives_in_sample_order_up_to_the_cap():
    group = [s(50, False), s(12, True), s(13, True), s(8, None), s(90, True, "length"), s(11, False)]
    # 13 < 18 is not a negative; the unscored one is neither; wrong ones of any length are negatives
    assert preference_pairs(group, 1.5, 8) == [(1, 0), (1, 4), (1, 5)]
    assert preference_pairs(group, 1.5, 2) == [(1, 0), (1, 4)]


def test_groups_of_evaluation_records_leave_out_greedy_ones():
    records = [
        {"problem": 1, "greedy": False, "output": "b0", "tokens": 4, "correct": True, "finish_reason": "stop"},
        {"problem": 0, "greedy": False, "output": "a0", "tokens": 3, "correct": False, "finish_reason": "stop"},
        {"problem": 0, "greedy": True, "output": "g", "tokens": 1, "correct": True, "finish_reason": "stop"},
        {"problem": 0, "greedy": False, "output": "a1", "tokens": 5, "correct": None, "finish_reason": "length"},
    ]
    assert groups_of(records) == [[Scored("a0", 3, False, "stop"), Scored("a1", 5, None, "length")],
                                  [Scored("b0", 4, True, "stop")]]
