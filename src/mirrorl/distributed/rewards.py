"""Reward scoring in a pool of Ray actors, which can live on other machines of the cluster.

Each actor builds the configured reward itself (`get_reward`), on its own machine: the code
reward probes bubblewrap there and refuses to start without it, so a pool on a machine without
bubblewrap stops the run before its first iteration with the sandbox's one-line error (fail
closed), whatever the driver's machine has. A batch is cut into one contiguous share per actor.
An actor that dies or hangs is replaced and its share scored again once; a share that fails twice
is returned unscored (None: dropped and counted by the loop, never a reward of 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray

from mirrorl.config import Config, RewardsConfig
from mirrorl.distributed.cluster import Failure, gather
from mirrorl.rewards.batch import BatchFirst
from mirrorl.train.metrics import console
from mirrorl.types import Problem


class RewardActor:
    """One reward, built in the actor's process from the config's `rewards` sections."""

    def __init__(self, name: str, rewards: dict[str, Any]) -> None:
        from mirrorl.rewards.registry import get_reward

        self.error: str | None = None
        try:
            self.reward = get_reward(name, RewardsConfig.model_validate(rewards))
        except ValueError as err:  # e.g. no bubblewrap on this machine: reported by `ready`, raised by the driver
            self.error = str(err)

    def ready(self) -> str | None:
        """None when the reward was built, else why not (one line)."""
        return self.error

    def score(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[float | None]:
        return list(self.reward(responses, problems))


class RewardPool(BatchFirst):
    """The `BatchReward` of `distributed.reward_workers` actors scoring shares of each batch."""

    def __init__(self, cfg: Config) -> None:
        settings = cfg.distributed
        self.remote = ray.remote(RewardActor).options(num_cpus=settings.cpus_per_actor, max_restarts=0)
        self.name, self.rewards = cfg.rl.reward, cfg.rewards.model_dump(mode="json")
        self.timeout = settings.call_timeout
        self.actors = [self._spawn() for _ in range(settings.reward_workers)]

    def _spawn(self) -> Any:
        actor = self.remote.remote(self.name, self.rewards)
        [error] = gather([actor.ready.remote()], self.timeout)
        if isinstance(error, Failure):
            raise RuntimeError(f"a reward worker {error.why} while starting")
        if error is not None:
            raise ValueError(f"reward worker: {error}")
        return actor

    def __call__(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[float | None]:
        if not responses:
            return []
        size = -(-len(responses) // len(self.actors))  # ceil: one contiguous share per actor
        starts = list(range(0, len(responses), size))
        values: list[float | None] = [None] * len(responses)
        todo = list(range(len(starts)))
        for attempt in range(2):
            calls = [self.actors[i].score.remote(responses[starts[i] : starts[i] + size],
                                                 problems[starts[i] : starts[i] + size]) for i in todo]
            outcomes = gather(calls, self.timeout)
            failed = []
            for i, outcome in zip(todo, outcomes):
                if isinstance(outcome, Failure):
                    failed.append(i)
                    if attempt == 0:
                        console.print(f"reward worker {i} {outcome.why}: replaced, its {size} samples scored again")
                        ray.kill(self.actors[i], no_restart=True)
                        self.actors[i] = self._spawn()
                else:
                    values[starts[i] : starts[i] + len(outcome)] = outcome
            todo = failed
        return values
