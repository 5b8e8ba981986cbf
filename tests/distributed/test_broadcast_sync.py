"""Weight sync through a broadcast group (distributed.weight_sync=broadcast): the workers receive
each version from learner rank 0, a replaced worker rejoins the group, a dead rank 0 stops the run."""

import json
import os
import signal

import pytest
import ray

from mirrorl.config import load_config
from mirrorl.data.tasks import make_split
from mirrorl.distributed import BackendError
from mirrorl.distributed.cluster import ray_cluster
from mirrorl.models import load_tokenizer
from mirrorl.rewards.batch import GuardedReward
from mirrorl.rewards.registry import get_reward
from mirrorl.train.metrics import MetricsLogger
from mirrorl.train.rl import train_rl
from mirrorl.types import Request

BROADCAST = ["run.backend=ray", "distributed.learners=1", "distributed.rollout_workers=2",
             "distributed.weight_sync=broadcast", "distributed.collective_timeout=15", "rollout.max_new_tokens=24",
             "rl.problems_per_iteration=3", "algo.num_samples=4", "rl.lr=1e-3", "run.tensorboard=false"]


@pytest.fixture(scope="module")
def cluster(tiny_policy_dir, local_ray):
    cfg = load_config(None, [*BROADCAST, "rl.iterations=2"])
    with ray_cluster(cfg, str(tiny_policy_dir)) as run:
        yield cfg, run


def worker_digests(workers):
    return ray.get([actor.digest.remote() for actor in workers.actors])


def test_workers_receive_each_version_by_broadcast(tmp_path, tiny_policy_dir, cluster):
    cfg, run = cluster
    group, workers = run.trainer, run.generator
    logger = MetricsLogger(tmp_path, "rl", tensorboard=False)
    train_rl(group, workers, GuardedReward(get_reward("chain_sum")), load_tokenizer(str(tiny_policy_dir)),
             make_split(30, seed=5), cfg, logger)
    logger.close()
    assert workers.grouped and len(group.layout) > 0
    workers.update_weights(2, group.state_dict())
    assert worker_digests(workers) == group.digests() * 2
    for row in map(json.loads, (tmp_path / "rl_metrics.jsonl").read_text().splitlines()):
        assert row["sync_bytes"] > 0 and row["version_lag_max"] == 0
        assert row["logprob_gap"] < 1e-4  # the workers generated with the learners' weights


def test_a_replaced_worker_gets_the_current_weights_and_rejoins_the_group(tiny_policy_dir, cluster):
    cfg, run = cluster
    group, workers = run.trainer, run.generator
    workers.update_weights(5, group.state_dict())
    tokenizer = load_tokenizer(str(tiny_policy_dir))
    requests = [Request(tokenizer(f"a={i % 10} b=4. sum a-b?")["input_ids"]) for i in range(32)]
    params = cfg.rollout.params(max_new_tokens=32)
    calm = workers.generate(requests, params, seed=2)
    victim, restarts = ray.get(workers.actors[0].pid.remote()), workers.restarts_left  # asked before: calls queue
    pending = workers.submit(requests, params, seed=2)
    os.kill(victim, signal.SIGKILL)
    rough = pending.result()  # the replacement loaded version 5 from rank 0's last broadcast, through the object store
    assert rough.weight_version == 5 and not workers.grouped and workers.restarts_left == restarts - 1
    assert [c.token_ids for c in rough.completions] == [c.token_ids for c in calm.completions]
    assert worker_digests(workers) == group.digests() * 2
    # a worker killed between versions: the next broadcast finds it dead, replaces it and forms the group again
    os.kill(ray.get(workers.actors[1].pid.remote()), signal.SIGKILL)
    workers.update_weights(6, group.state_dict())
    assert workers.grouped and workers.restarts_left == restarts - 2
    assert worker_digests(workers) == group.digests() * 2
    assert workers.generate(requests[:4], params, seed=2).weight_version == 6


def test_a_dead_learner_rank_0_stops_the_broadcast_with_one_line(tiny_policy_dir, local_ray):
    cfg = load_config(None, [*BROADCAST, "distributed.rollout_workers=1", "distributed.collective_timeout=10"])
    with ray_cluster(cfg, str(tiny_policy_dir)) as run:
        weights = run.trainer.state_dict()
        run.generator.update_weights(1, weights)
        os.kill(ray.get(run.trainer.actors[0].pid.remote()), signal.SIGKILL)
        with pytest.raises(BackendError, match="learner rank 0 died") as caught:
            run.generator.update_weights(2, weights)
        assert "\n" not in str(caught.value)
