"""Choosing among a model's own samples: shortest rejection sampling and DPO pairs (k1.5 sec. 2.4).

Both start from n responses per problem sampled from one model (the evaluation's sample records,
`mirrorl.eval.evaluate`), each with its verdict, token count and finish reason.

  shortest rejection sampling  keep, per problem, the shortest response that is correct and
                               finished normally (never a truncated one, which the verifier may
                               still accept); ties in length go to the first sampled.
  DPO pairs                    the positive is that same response; the negatives are the wrong
                               responses (a truncated one counts as wrong: it did not finish) and
                               the correct ones at least `longer_ratio` (the report's 1.5) times
                               longer than the positive. A problem without a correct finished
                               response gives no pair. Responses the reward could not score are
                               neither positive nor negative.

Does not: sample (the evaluation does), or judge length in characters (tokens, as the report).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scored:
    """One sampled response."""

    text: str
    tokens: int  # generated tokens, EOS included
    correct: bool | None  # None: the reward could not score it
    finish_reason: str  # "stop" (EOS or a stop token), "length", "repeat"


def groups_of(records: Iterable[dict[str, Any]]) -> list[list[Scored]]:
    """The sampled (not greedy) evaluation records grouped by problem, in problem order."""
    groups: dict[int, list[Scored]] = defaultdict(list)
    for record in records:
        if not record["greedy"]:
            groups[record["problem"]].append(
                Scored(record["output"], record["tokens"], record["correct"], record["finish_reason"]))
    return [groups[index] for index in sorted(groups)]


def shortest_correct(responses: Sequence[Scored]) -> int | None:
    """Index of the shortest correct response that finished normally; None when there is none.

    >>> shortest_correct([Scored("long", 9, True, "stop"), Scored("cut", 4, True, "length"),
    ...                   Scored("wrong", 3, False, "stop"), Scored("short", 6, True, "stop")])
    3
    """
    finished = [i for i, r in enumerate(responses) if r.correct and r.finish_reason == "stop"]
    return min(finished, key=lambda i: responses[i].tokens, default=None)


def preference_pairs(responses: Sequence[Scored], longer_ratio: float, max_pairs: int) -> list[tuple[int, int]]:
    """(positive, negative) index pairs of one problem's responses, negatives in sample order.

    >>> group = [Scored("a", 10, True, "stop"), Scored("b", 6, True, "stop"), Scored("c", 9, True, "stop"),
    ...          Scored("d", 7, False, "stop"), Scored("e", 20, True, "length"), Scored("f", 5, None, "stop")]
    >>> preference_pairs(group, 1.5, 4)  # 10 >= 1.5 * 6, 9 >= 1.5 * 6; d is wrong; e did not finish
    [(1, 0), (1, 2), (1, 3), (1, 4)]
    """
    positive = shortest_correct(responses)
    if positive is None:
        return []
    shortest = responses[positive].tokens
    negatives = [
        i for i, r in enumerate(responses)
        if r.correct is not None and i != positive
        and (not r.correct or r.finish_reason != "stop" or r.tokens >= longer_ratio * shortest)
    ]
    return [(positive, negative) for negative in negatives[:max_pairs]]
