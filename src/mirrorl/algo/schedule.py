"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math


def one_cycle(step: int, total: int, warmup_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at the last step.

    >>> [round(one_cycle(s, 10, 0.2), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    warmup = max(1, int(total * warmup_ratio))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def linear_warmup(iteration: int, warmup_iterations: int) -> float:
    """LR multiplier of the RL loop: linear warm-up over the first iterations, then 1.

    >>> [linear_warmup(i, 4) for i in (0, 3, 9)], linear_warmup(0, 0)
    ([0.25, 1.0, 1.0], 1.0)
    """
    return min(1.0, (iteration + 1) / max(1, warmup_iterations))
