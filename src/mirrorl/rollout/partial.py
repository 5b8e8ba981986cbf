"""Partial rollouts (k1.5 sec. 2.6.2): a per-iteration token budget per trajectory and a replay buffer.

Each iteration every trajectory gets at most `segment_budget` new tokens. One that runs out of
budget stays in the buffer with its tokens, its behaviour log-probs and, per token, the policy
weight version (iteration) the generator reports for it; the next iteration continues it under
the then-current policy. A group (the k responses to one draw of a problem) leaves the buffer for training only
when all its members are finished, so the mean-reward baseline stays per problem. With
`segment_budget` 0 every trajectory finishes in the iteration it starts: full rollouts are the
same code with an unlimited budget.

Asynchronous refill: an iteration hands the engine one queue, the continued trajectories first and
then the new problems' trajectories, and the engine's continuous batching gives a slot freed by a
finished (or budget-cut) trajectory to the next one in the queue at once. So while some slots
continue long responses, the others keep taking new short problems, and the only idle slots are
those of the iteration's last budget-length stretch.

What we chose where the report is silent: every iteration starts the same number of new groups
(`problems_per_iteration`), however full the buffer is, so at steady state as many groups finish
per iteration as start and the training batch keeps its size on average; the buffer stays bounded
(a trajectory lives at most max_new_tokens / segment_budget iterations). The number of slots (the
engine's `batch_size`) is independent of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mirrorl.types import AsyncGenerator, GenerateResult, Generator, Request, SamplingParams


@dataclass
class Trajectory:
    group_id: int
    problem_index: int  # index into the problem list the sampler draws from
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # behaviour log-probs, one per response token
    versions: list[int] = field(default_factory=list)  # per response token: the iteration that produced it
    segments: int = 0
    finish_reason: str | None = None  # None while unfinished


@dataclass
class RolloutStep:
    """What one `PartialRollouts.step` did."""

    groups: list[list[Trajectory]]  # the groups it completed, popped from the buffer
    stepped: int  # trajectories it extended
    new_tokens: int
    idle_fraction: float  # of the generator's slots
    generator_metrics: dict[str, float]  # the generator's own figures (`GenerateResult.metrics`)


class PartialRollouts:
    """Groups in flight across iterations, and the step that advances them."""

    def __init__(self, group_size: int, segment_budget: int) -> None:
        self.group_size, self.segment_budget = group_size, segment_budget
        self.groups: dict[int, list[Trajectory]] = {}
        self.next_group_id = 0

    def unfinished(self) -> list[Trajectory]:
        return [t for group in self.groups.values() for t in group if t.finish_reason is None]

    def add(self, problem_index: int, prompt_ids: list[int]) -> None:
        """Start a group of `group_size` empty trajectories for one problem."""
        group_id, self.next_group_id = self.next_group_id, self.next_group_id + 1
        self.groups[group_id] = [Trajectory(group_id, problem_index, list(prompt_ids)) for _ in range(self.group_size)]

    def step(self, generator: Generator, params: SamplingParams, seed: int) -> RolloutStep:
        """Advance every unfinished trajectory by one segment (continuations queued first); pop the
        groups now complete. Each new token records the weight version the generator reports."""
        running = self.unfinished()
        return self._advance(running, generator.generate(self._requests(running), params, seed))

    def submit(self, generator: AsyncGenerator, params: SamplingParams, seed: int) -> Callable[[], RolloutStep]:
        """`step` started on the generator: call the result to finish it. The buffer must not change meanwhile."""
        running = self.unfinished()
        pending = generator.submit(self._requests(running), params, seed)
        return lambda: self._advance(running, pending.result())

    def _requests(self, running: list[Trajectory]) -> list[Request]:
        budget = self.segment_budget or None
        return [Request(t.prompt_ids, t.response_ids, budget) for t in running]

    def _advance(self, running: list[Trajectory], result: GenerateResult) -> RolloutStep:
        for trajectory, done in zip(running, result.completions, strict=True):
            trajectory.response_ids += done.token_ids
            trajectory.logprobs += done.logprobs
            trajectory.versions += [result.weight_version] * len(done.token_ids)
            trajectory.segments += 1
            trajectory.finish_reason = None if done.finish_reason == "budget" else done.finish_reason
        ready = [gid for gid, group in self.groups.items() if all(t.finish_reason for t in group)]
        return RolloutStep([self.groups.pop(gid) for gid in ready], len(running), result.new_tokens,
                           result.idle_fraction, result.metrics)

    def state_dict(self) -> dict:
        """The buffer as JSON-able data (tokens, behaviour log-probs and per-token versions included).

        It shares the trajectories' lists: copy it (e.g. through JSON) before the buffer moves on.
        """
        return {"group_size": self.group_size, "next_group_id": self.next_group_id,
                "groups": {str(gid): [vars(t) for t in group] for gid, group in self.groups.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("group_size", self.group_size) != self.group_size:
            raise ValueError(f"the saved replay buffer holds groups of {state['group_size']} trajectories; "
                             f"algo.num_samples is now {self.group_size}")
        self.next_group_id = state["next_group_id"]
        self.groups = {int(gid): [Trajectory(**t) for t in group] for gid, group in state["groups"].items()}


def rollout_metrics(step: RolloutStep, buffer: PartialRollouts, version: int) -> dict[str, float]:
    """Buffer size, segments per finished trajectory, off-policy token fraction and version lag,
    idle slots, the fraction of the trajectories stepped that stopped on the budget this iteration,
    and the generator's own figures."""
    ready = step.groups
    finished = [t for group in ready for t in group]
    lags = [version - v for t in finished for v in t.versions]  # per token of the finished trajectories
    return {
        **step.generator_metrics,
        "version_lag_mean": sum(lags) / max(1, len(lags)),
        "version_lag_max": max(lags, default=0),
        "buffer_trajectories": len(buffer.unfinished()),
        "buffer_groups": len(buffer.groups),
        "segments_per_trajectory": sum(t.segments for t in finished) / max(1, len(finished)),
        "off_policy_token_fraction": sum(lag != 0 for lag in lags) / max(1, len(lags)),
        "idle_slot_fraction": step.idle_fraction,
        "finish_budget_fraction": len(buffer.unfinished()) / max(1, step.stepped),
        "finished_groups": len(ready),
    }
