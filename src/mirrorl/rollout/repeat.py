"""Repeat detection: stop a response whose tail has started looping (k1.5 sec. 2.6.2, with partial rollouts).

A tail repeats with period p when each of its last r tokens equals the token p places before it;
the repeated span is then r + p tokens long and holds (r + p) / p copies of the period. We keep,
for every period p = 1..max_period, that run length r and fire when a span both repeats the
period at least `min_repeats` times and covers at least `min_span` tokens (so "...." or "00" in
normal text does not fire, while a sentence said four times over does).

The run lengths update in O(max_period) per new token for a whole batch at once
(`advance`), and `tail_runs` computes them from scratch for a given token list; the two agree,
which the tests check, so a trajectory continued in a later segment keeps its history.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mirrorl.types import RepeatRule


def tail_runs(tokens: Sequence[int], max_period: int) -> Tensor:
    """[max_period] run length r_p: how many trailing tokens equal the token p places earlier."""
    seq = torch.tensor(list(tokens), dtype=torch.long)
    runs = torch.zeros(max_period, dtype=torch.long)
    for p in range(1, min(max_period, len(seq) - 1) + 1):
        unequal = torch.nonzero(seq[p:] != seq[:-p])  # positions (offset by p) that break the run
        last_break = int(unequal[-1]) + 1 if len(unequal) else 0
        runs[p - 1] = len(seq) - p - last_break
    return runs


def advance(runs: Tensor, history: Tensor, lengths: Tensor, new_tokens: Tensor) -> Tensor:
    """Run lengths after appending `new_tokens` [S] to `history` [S, T] holding `lengths` [S] tokens.

    runs: [S, P]. Returns the new [S, P]; the caller writes the tokens into `history` afterwards.
    """
    periods = torch.arange(1, runs.shape[1] + 1, device=runs.device)  # [P]
    back = lengths[:, None] - periods[None, :]  # [S, P] index of the token p places before
    earlier = history.gather(1, back.clamp(min=0))  # [S, P]
    same = (earlier == new_tokens[:, None]) & (back >= 0)  # [S, P]
    return (runs + 1) * same


def fires(runs: Tensor, rule: RepeatRule) -> Tensor:
    """[..., P] run lengths -> [...] bool: the tail repeats some period often and long enough."""
    periods = torch.arange(1, runs.shape[-1] + 1, device=runs.device)  # [P]
    span = runs + periods  # [..., P]
    return ((span >= rule.min_repeats * periods) & (span >= rule.min_span) & (runs > 0)).any(-1)


def is_repeating(tokens: Sequence[int], rule: RepeatRule) -> bool:
    """Whether the tail of `tokens` loops under `rule`.

    >>> is_repeating([7, 8, 9] * 5, RepeatRule(max_period=4, min_repeats=4, min_span=12))
    True
    >>> is_repeating([7, 8, 9] * 3, RepeatRule(max_period=4, min_repeats=4, min_span=12))
    False
    """
    return bool(fires(tail_runs(tokens, rule.max_period), rule))
