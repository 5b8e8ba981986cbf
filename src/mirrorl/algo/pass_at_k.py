"""pass@k and maj@k of one problem, from its n sampled responses.

pass@k is the chance that at least one of k responses drawn without replacement from the n
sampled ones is correct, with c of the n correct: the unbiased estimator of Chen et al. 2021
("Evaluating Large Language Models Trained on Code", sec. 2.1),

  pass@k = 1 - C(n-c, k) / C(n, k)            (their eq. 1)
         = 1 - prod_{i=n-c+1..n} (1 - k/i)     (1 when n - c < k),

computed as the product of c factors in (0, 1), so no huge binomial is formed (the numerically
stable form of their fig. 3); the mean over problems is the reported pass@k. maj@k (majority
voting, also called self-consistency) takes the answer most of k responses give and asks whether
it is right.

Does not: average over problems or decide what an unscored response counts as (the caller does:
mirrorl.eval.evaluate); extract answers or compare two answers for equivalence: votes go to answer
strings as given, so "1/2" and "0.5" split their votes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def check_k(k: int, num_samples: int) -> None:
    """ValueError unless 1 <= k <= num_samples: pass@k and maj@k need k of the n samples.

    >>> check_k(4, 2)
    Traceback (most recent call last):
    ...
    ValueError: pass@k / maj@k with k=4 needs at least k samples per problem, got n=2: ask for k <= n or sample more
    """
    if not 1 <= k <= num_samples:
        need = "k >= 1" if k < 1 else "k <= n or sample more"
        raise ValueError(f"pass@k / maj@k with k={k} needs at least k samples per problem, got n={num_samples}: "
                         f"ask for {need}")


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k of one problem with `num_correct` right of `num_samples` (Chen et al. 2021).

    >>> pass_at_k(num_samples=4, num_correct=1, k=1)  # c / n
    0.25
    >>> pass_at_k(4, 1, 2)  # 1 - C(3, 2) / C(4, 2) = 1 - 3/6
    0.5
    >>> pass_at_k(4, 2, 3), pass_at_k(4, 0, 4)  # fewer than k wrong: some draw of k is right; none right
    (1.0, 0.0)
    """
    check_k(k, num_samples)
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"pass@k: num_correct={num_correct} must lie in [0, num_samples={num_samples}]")
    if num_samples - num_correct < k:  # every draw of k contains a correct response
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1..n} (1 - k/i): c factors, each in (0, 1)
    all_wrong = 1.0
    for i in range(num_samples - num_correct + 1, num_samples + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool | None]) -> bool | None:
    """Whether the majority answer of these responses is right (maj@k of one problem, k = len(answers)).

    `answers[i]` is the answer extracted from response i (None: none found) and `correct[i]` its
    verdict (None: unscored). Responses without an answer do not vote; unscored ones do (the vote
    is about answers, not rewards). A tie goes to the answer seen first. The problem is right when
    a response carrying the winning answer was scored correct, wrong when none was but one was
    scored, None when all of them are unscored (nothing is known), and wrong when nobody voted.

    >>> majority_vote(["7", "8", "8", None], [False, True, True, False])
    True
    >>> majority_vote(["8", "7", "7", "8"], [True, False, False, True])  # 2-2 tie: "8" came first
    True
    >>> majority_vote(["7", "8"], [None, True]), majority_vote([None, None], [True, True])
    (None, False)
    """
    if len(answers) != len(correct):
        raise ValueError(f"majority_vote: {len(answers)} answers but {len(correct)} verdicts")
    votes = Counter(answer for answer in answers if answer is not None)
    if not votes:
        return False
    winner = votes.most_common(1)[0][0]  # equal counts keep first-seen order, so a tie goes to the first
    verdicts = [verdict for answer, verdict in zip(answers, correct) if answer == winner]
    if any(verdict is True for verdict in verdicts):
        return True
    return False if any(verdict is False for verdict in verdicts) else None
