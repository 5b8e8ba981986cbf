"""The k1.5 length reward (sec. 2.3.3), computed per group of responses to one problem.

For the k responses of a problem with lengths len(i), min_len and max_len over the group:
  lambda_i = 0.5 - (len(i) - min_len) / (max_len - min_len)
  len_reward(i) = lambda_i if response i is correct, else min(0, lambda_i)
and 0 for the whole group when max_len == min_len. It is added to the correctness reward with a
weight (not given by the report) after a warm-up without it (length not given either).

Legend: B responses in the batch, any number of groups interleaved.
"""

from __future__ import annotations

import torch
from torch import Tensor


def length_rewards(lengths: Tensor, correct: Tensor, group_ids: Tensor) -> Tensor:
    """k1.5 length reward of each response: lengths [B], correct [B] bool, group_ids [B] -> [B]."""
    lengths = lengths.float()
    _, group = torch.unique(group_ids, return_inverse=True)  # [B] dense group index
    num_groups = int(group.max()) + 1 if group.numel() else 0
    inf = torch.full((num_groups,), float("inf"), device=lengths.device)
    min_len = inf.scatter_reduce(0, group, lengths, "amin")[group]  # [B]
    max_len = (-inf).scatter_reduce(0, group, lengths, "amax")[group]  # [B]
    span = max_len - min_len  # [B]
    lam = 0.5 - (lengths - min_len) / span.clamp(min=1e-12)  # [B]
    reward = torch.where(correct.bool(), lam, lam.clamp(max=0.0))  # [B]
    return torch.where(span > 0, reward, torch.zeros_like(reward))  # [B]


def length_penalty_weight(iteration: int, weight: float, warmup_iterations: int) -> float:
    """0 during the warm-up iterations, then the constant `weight` (the report's schedule)."""
    return 0.0 if iteration < warmup_iterations else weight
