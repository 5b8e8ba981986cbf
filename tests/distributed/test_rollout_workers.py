"""Rollout workers on Ray: versioned weight sync checked by digest, and a worker killed mid-call."""

import dataclasses
import json
import os
import signal
import threading
import time

import pytest
import ray
import torch

from mirrorl.config import load_config
from mirrorl.data.tasks import make_split
from mirrorl.distributed.cluster import ray_cluster
from mirrorl.models import load_tokenizer
from mirrorl.rewards.batch import GuardedReward
from mirrorl.rewards.registry import get_reward
from mirrorl.train.metrics import MetricsLogger
from mirrorl.train.rl import train_rl
from mirrorl.types import Request

SEPARATE = ["run.backend=ray", "distributed.learners=2", "distributed.rollout_workers=2", "rollout.max_new_tokens=24",
            "rl.problems_per_iteration=3", "algo.num_samples=4", "rl.lr=1e-3", "run.tensorboard=false"]


@pytest.fixture(scope="module")
def cluster(tiny_policy_dir, local_ray):
    """2 learner ranks and 2 rollout workers, shared by this module's tests (starting actors costs seconds)."""
    cfg = load_config(None, [*SEPARATE, "rl.iterations=3"])
    with ray_cluster(cfg, str(tiny_policy_dir)) as run:
        yield cfg, run


def test_workers_load_each_version_the_learners_publish(tmp_path, tiny_policy_dir, cluster):
    cfg, run = cluster
    group, workers = run.trainer, run.generator
    tokenizer = load_tokenizer(str(tiny_policy_dir))
    logger = MetricsLogger(tmp_path, "rl", tensorboard=False)
    train_rl(group, workers, GuardedReward(get_reward("chain_sum")), tokenizer, make_split(30, seed=5), cfg, logger)
    logger.close()
    learners = group.digests()
    assert learners[0] == learners[1]
    stale = ray.get([actor.digest.remote() for actor in workers.actors])
    assert all(digest != learners[0] for digest in stale)  # the workers hold the version before the last step
    workers.update_weights(3, group.state_dict())
    assert ray.get([actor.digest.remote() for actor in workers.actors]) == learners
    rows = [json.loads(line) for line in (tmp_path / "rl_metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["sync_bytes"] > 0 and row["time_sync"] > 0 and row["version_lag_max"] == 0
        assert row["worker0_tokens_per_second"] > 0 and row["worker1_tokens_per_second"] > 0
        assert row["logprob_gap"] < 1e-4  # the workers' log pi_i and the learners' agree: same weights


def test_a_worker_killed_mid_call_is_replaced_and_every_request_answered_once(tiny_policy_dir, cluster):
    cfg, run = cluster
    workers = run.generator
    tokenizer = load_tokenizer(str(tiny_policy_dir))
    prompts = [tokenizer(f"a={i % 10} b={i % 7}. sum a-b?")["input_ids"] for i in range(384)]
    requests = [Request(prompt) for prompt in prompts]
    params = dataclasses.replace(cfg.rollout.params(max_new_tokens=100), repeat=None)  # long calls: time to kill
    calm = workers.generate(requests, params, seed=7)
    victim = ray.get(workers.actors[0].pid.remote())
    restarts = workers.restarts_left
    killed_at = []

    def kill() -> None:
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        killed_at.append(time.monotonic())

    threading.Thread(target=kill).start()
    rough = workers.generate(requests, params, seed=7)
    returned_at = time.monotonic()
    assert killed_at and killed_at[0] < returned_at
    assert workers.restarts_left == restarts - 1
    assert ray.get(workers.actors[0].pid.remote()) != victim
    # the replacement re-ran the dead worker's share with its seed: the same answers, each once
    assert [c.token_ids for c in rough.completions] == [c.token_ids for c in calm.completions]
    assert all(torch.tensor(c.logprobs).allclose(torch.tensor(d.logprobs))
               for c, d in zip(rough.completions, calm.completions))


def test_a_worker_killed_during_a_pending_call_answers_under_the_version_it_started_with(tiny_policy_dir, cluster):
    cfg, run = cluster
    workers = run.generator
    tokenizer = load_tokenizer(str(tiny_policy_dir))
    requests = [Request(tokenizer(f"a={i % 10} b=3. sum a-b?")["input_ids"]) for i in range(64)]
    params = cfg.rollout.params(max_new_tokens=48)
    workers.update_weights(7, run.trainer.state_dict())
    calm = workers.generate(requests, params, seed=3)
    victim, restarts = ray.get(workers.actors[1].pid.remote()), workers.restarts_left  # asked before: calls queue
    pending = workers.submit(requests, params, seed=3)
    os.kill(victim, signal.SIGKILL)  # its share is re-run from scratch
    rough = pending.result()
    assert workers.restarts_left == restarts - 1
    assert rough.weight_version == calm.weight_version == 7
    assert [c.token_ids for c in rough.completions] == [c.token_ids for c in calm.completions]


def test_asynchronous_rollouts_train_on_tokens_exactly_one_version_old(tmp_path, tiny_policy_dir, cluster):
    """max_staleness=1: every iteration after the first trains on a rollout made under the weights
    before its own, never older, even with one worker stalled for seconds (SIGSTOP, then SIGCONT);
    the off-policy correction weights them."""
    cfg, run = cluster
    cfg = cfg.model_copy(update={"distributed": cfg.distributed.model_copy(update={"max_staleness": 1})})
    slow = ray.get(run.generator.actors[0].pid.remote())
    resumed = []

    class StallingLogger(MetricsLogger):
        def log(self, step, values):  # iteration 0 is logged while iteration 1's rollout runs: stall a worker
            super().log(step, values)
            if step == 0:
                os.kill(slow, signal.SIGSTOP)
                threading.Timer(2.0, lambda: (os.kill(slow, signal.SIGCONT), resumed.append(time.monotonic()))).start()

    logger = StallingLogger(tmp_path, "rl", tensorboard=False)
    train_rl(run.trainer, run.generator, GuardedReward(get_reward("chain_sum")), load_tokenizer(str(tiny_policy_dir)),
             make_split(30, seed=5), cfg, logger)
    ended = time.monotonic()
    logger.close()
    assert resumed and resumed[0] < ended  # the run waited for the stalled worker
    rows = [json.loads(line) for line in (tmp_path / "rl_metrics.jsonl").read_text().splitlines()]
    assert [(row["version_lag_mean"], row["version_lag_max"]) for row in rows] == [(0, 0), (1, 1), (1, 1)]
    assert all("stale_weight_mean" in row for row in rows[1:]) and "stale_weight_mean" not in rows[0]
