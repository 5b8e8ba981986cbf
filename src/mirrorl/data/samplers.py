"""Which problems each RL iteration trains on (k1.5 sec. 2.3.4).

- UniformSampler: shuffled epochs, every problem once per epoch, crossing epoch boundaries
  without a gap (the cursor is a position in the current permutation, not a step counter).
- CurriculumSampler: before `switch_iteration`, shuffled epochs over the easy pool (or over all
  problems, the report's ablation setting); from then on only the hard pool.
- PrioritizedSampler: tracks each problem's success rate s_i over the times it was sampled
  (running mean, or an EMA) and draws with replacement with probability proportional to
  max(1 - s_i, min_weight). How s_i starts and is smoothed is not given by the report:
  `initial_success` and `ema` choose it.

Every sampler has `sample(num, iteration)`, `update(indices, success)`, and a JSON-serialisable
`state_dict()` / `load_state_dict()` that include the RNG, so a resumed run draws the same problems:
the epoch cursors (order, position, epoch) record which problems an epoch has consumed, the
prioritized sampler's counts and success rates record every draw it learned from. Loading a state
saved over another set of problems is a ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def _rng_from(state: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


class _EpochCursor:
    """Shuffled passes over a fixed pool of indices, consumed without replacement."""

    def __init__(self, pool: Sequence[int], rng: np.random.Generator) -> None:
        self.pool = list(pool)
        self.order: list[int] = []
        self.position = 0
        self.epoch = -1
        self.rng = rng

    def take(self, num: int) -> list[int]:
        chosen = []
        while len(chosen) < num:
            if self.position >= len(self.order):
                self.order = [self.pool[i] for i in self.rng.permutation(len(self.pool))]
                self.position, self.epoch = 0, self.epoch + 1
            step = min(num - len(chosen), len(self.order) - self.position)
            chosen += self.order[self.position : self.position + step]
            self.position += step
        return chosen

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order, "position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["order"] and sorted(state["order"]) != sorted(self.pool):
            raise ValueError(f"the saved sampler state covers another set of problems ({len(state['order'])} "
                             f"in the epoch, {len(self.pool)} now)")
        self.order, self.position, self.epoch = list(state["order"]), state["position"], state["epoch"]


class UniformSampler:
    def __init__(self, num_problems: int, seed: int) -> None:
        if num_problems < 1:
            raise ValueError("the uniform sampler needs at least one problem")
        self.rng = np.random.default_rng(seed)
        self.cursor = _EpochCursor(range(num_problems), self.rng)

    def sample(self, num: int, iteration: int) -> list[int]:
        return self.cursor.take(num)

    def update(self, indices: list[int], success: list[float]) -> None:
        """Uniform sampling ignores outcomes."""

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor.state_dict(), "rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng = self.cursor.rng = _rng_from(state["rng"])
        self.cursor.load_state_dict(state["cursor"])


class CurriculumSampler:
    def __init__(
        self,
        difficulties: Sequence[float],
        switch_iteration: int,
        hard_min_difficulty: float,
        first_phase: Literal["easy", "all"] = "easy",
        seed: int = 0,
    ) -> None:
        hard = [i for i, d in enumerate(difficulties) if d >= hard_min_difficulty]
        first = range(len(difficulties)) if first_phase == "all" else [
            i for i, d in enumerate(difficulties) if d < hard_min_difficulty
        ]
        if not hard:
            raise ValueError("curriculum: no problem has difficulty >= "
                             f"sampler.hard_min_difficulty={hard_min_difficulty}")
        if not first:
            raise ValueError("curriculum: no problem has difficulty < "
                             f"sampler.hard_min_difficulty={hard_min_difficulty}")
        self.switch_iteration = switch_iteration
        self.rng = np.random.default_rng(seed)
        self.phases = {"first": _EpochCursor(first, self.rng), "hard": _EpochCursor(hard, self.rng)}

    def phase(self, iteration: int) -> str:
        return "first" if iteration < self.switch_iteration else "hard"

    def sample(self, num: int, iteration: int) -> list[int]:
        return self.phases[self.phase(iteration)].take(num)

    def update(self, indices: list[int], success: list[float]) -> None:
        """The curriculum follows the iteration count, not outcomes."""

    def state_dict(self) -> dict[str, Any]:
        return {"phases": {k: c.state_dict() for k, c in self.phases.items()}, "rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng = _rng_from(state["rng"])
        for name, cursor in self.phases.items():
            cursor.rng = self.rng
            cursor.load_state_dict(state["phases"][name])


class PrioritizedSampler:
    def __init__(
        self,
        num_problems: int,
        seed: int,
        initial_success: float = 0.0,
        ema: float | None = None,
        min_weight: float = 0.0,
    ) -> None:
        if num_problems < 1:
            raise ValueError("the prioritized sampler needs at least one problem")
        self.rng = np.random.default_rng(seed)
        self.success_rates = np.full(num_problems, float(initial_success))
        self.counts = np.zeros(num_problems, dtype=np.int64)
        self.ema, self.min_weight = ema, min_weight

    def probabilities(self) -> np.ndarray:
        weights = np.maximum(1.0 - self.success_rates, self.min_weight)
        total = weights.sum()
        if total <= 0:
            return np.full(len(weights), 1.0 / len(weights))
        return weights / total

    def sample(self, num: int, iteration: int) -> list[int]:
        return self.rng.choice(len(self.success_rates), size=num, replace=True, p=self.probabilities()).tolist()

    def update(self, indices: list[int], success: list[float]) -> None:
        """Fold each sampled problem's success fraction into s_i (running mean or EMA)."""
        for index, value in zip(indices, success):
            self.counts[index] += 1
            if self.ema is None:
                self.success_rates[index] += (value - self.success_rates[index]) / self.counts[index]
            else:
                self.success_rates[index] += self.ema * (value - self.success_rates[index])

    def state_dict(self) -> dict[str, Any]:
        return {"success_rates": self.success_rates.tolist(), "counts": self.counts.tolist(),
                "rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["success_rates"]) != len(self.success_rates):
            raise ValueError(f"the saved sampler state covers {len(state['success_rates'])} problems, "
                             f"the data now has {len(self.success_rates)}")
        self.success_rates = np.asarray(state["success_rates"], dtype=float)
        self.counts = np.asarray(state["counts"], dtype=np.int64)
        self.rng = _rng_from(state["rng"])
