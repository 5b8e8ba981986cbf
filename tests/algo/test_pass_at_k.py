"""pass@k against the exact binomial formula of Chen et al. 2021, and majority voting on hand-made votes."""

import math

import pytest

from mirrorl.algo.pass_at_k import check_k, majority_vote, pass_at_k


def _exact(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) in exact integers (math.comb is 0 when k > n - c)."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 16, 64, 200])
def test_pass_at_k_equals_the_binomial_formula(n):
    for c in range(n + 1):  # includes c = 0 and c = n
        for k in range(1, n + 1):  # includes k = n
            assert pass_at_k(n, c, k) == pytest.approx(_exact(n, c, k), rel=1e-12, abs=1e-12), (n, c, k)


def test_pass_at_k_by_hand():
    # pass@1 is c / n: 3 of 8 -> 0.375
    assert pass_at_k(8, 3, 1) == pytest.approx(0.375, abs=1e-15)
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7; product form 1 - (1 - 2/4)(1 - 2/5) = 1 - 0.3
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)
    # n=5, c=2, k=4: only 3 wrong, so every draw of 4 has a right one
    assert pass_at_k(5, 2, 4) == 1.0
    # none right: 0 whatever k; all right: 1 whatever k; k = n with one right: 1
    assert (pass_at_k(6, 0, 6), pass_at_k(6, 6, 1), pass_at_k(6, 1, 6)) == (0.0, 1.0, 1.0)


def test_pass_at_k_stays_finite_where_the_binomials_overflow_floats():
    # C(2000, 1000) ~ 2e600 overflows a float; the product form does not form it.
    # n=2000, c=1, k=1000: 1 - C(1999, 1000) / C(2000, 1000) = 1 - (2000 - 1000) / 2000 = 0.5
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5, abs=1e-12)
    assert pass_at_k(2000, 3, 1000) == pytest.approx(_exact(2000, 3, 1000), abs=1e-12)


def test_k_above_n_and_bad_counts_are_value_errors():
    with pytest.raises(ValueError, match=r"k=5 .*n=4"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match=r"k=0"):
        check_k(0, 4)
    with pytest.raises(ValueError, match=r"num_correct=5"):
        pass_at_k(4, 5, 1)


def test_majority_vote_clear_majority():
    # "12" has 3 votes of 5: right when its responses were scored right, wrong when scored wrong
    assert majority_vote(["12", "11", "12", "13", "12"], [True, False, True, False, True]) is True
    assert majority_vote(["11", "12", "11", "11"], [False, True, False, False]) is False  # one right, outvoted


def test_majority_vote_tie_goes_to_the_answer_seen_first():
    # "3" and "4" have 2 votes each; "4" is seen first, so its verdict decides
    assert majority_vote(["4", "3", "3", "4"], [False, True, True, False]) is False
    assert majority_vote(["3", "4", "3", "4"], [True, False, True, False]) is True


def test_majority_vote_without_answers_or_verdicts():
    assert majority_vote([None, None, None], [True, True, True]) is False  # nobody voted
    assert majority_vote([], []) is False
    # a response without an answer does not vote: 2 Nones do not outvote one "5"
    assert majority_vote([None, None, "5"], [False, False, True]) is True
    # unscored responses vote; the winner's verdict comes from whichever of its responses was scored
    assert majority_vote(["9", "9", "8"], [None, True, False]) is True
    assert majority_vote(["9", "9", "8"], [None, False, True]) is False
    assert majority_vote(["9", "9", "8"], [None, None, True]) is None  # the winner was never scored
    with pytest.raises(ValueError, match="2 answers but 1 verdicts"):
        majority_vote(["1", "2"], [True])
