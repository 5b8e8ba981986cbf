"""Rewards scored by a pool of Ray actors: same values as in the driver, fail-closed start, a dead worker replaced."""

import os
import signal
import sys
from pathlib import Path

import pytest
import ray

from mirrorl.config import load_config
from mirrorl.data.tasks import make_split
from mirrorl.distributed.rewards import RewardActor, RewardPool
from mirrorl.rewards.registry import get_reward

sys.path.insert(0, str(Path(__file__).parent.parent / "rewards"))
from test_sandbox_unavailable import assert_refusal, fake_bwrap  # noqa: E402

POOL = ["run.backend=ray", "distributed.reward_workers=2", "distributed.cpus_per_actor=0.25"]


def test_the_pool_scores_as_the_driver_would_and_replaces_a_dead_worker(local_ray):
    problems = make_split(7, seed=3)
    responses = [f"answer:{p.answer}" if i % 2 else "answer:-1" for i, p in enumerate(problems)]
    expected = get_reward("chain_sum")(responses, problems)
    pool = RewardPool(load_config(None, POOL))
    try:
        assert pool(responses, problems) == expected and pool([], []) == []
        os.kill(ray.get(pool.actors[1].__ray_call__.remote(lambda self: os.getpid())), signal.SIGKILL)
        assert pool(responses, problems) == expected  # the dead worker's share scored by its replacement
    finally:
        for actor in pool.actors:
            ray.kill(actor)


def test_a_reward_the_workers_cannot_build_stops_the_pool_at_start(local_ray):
    with pytest.raises(ValueError, match="reward worker: .*no_such_reward"):
        RewardPool(load_config(None, [*POOL, "rl.reward=no_such_reward"]))


def test_a_reward_worker_without_bubblewrap_refuses_the_code_reward(monkeypatch):
    fake_bwrap(monkeypatch, None)  # the worker's machine has no bubblewrap
    error = RewardActor("code", {}).ready()
    assert error is not None
    assert_refusal(error)
    assert RewardActor("code_unprotected", {}).ready() is None  # the explicit choice still builds
