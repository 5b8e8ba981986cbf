"""Two learner ranks, under DDP or FSDP2, train exactly as one process on the same global batch."""

import sys
from pathlib import Path

import pytest
import torch

from mirrorl.config import load_config
from mirrorl.data.tasks import make_split
from mirrorl.distributed.cluster import ray_cluster
from mirrorl.models import load_policy
from mirrorl.rewards.batch import GuardedReward
from mirrorl.rewards.registry import get_reward
from mirrorl.train.metrics import MetricsLogger
from mirrorl.train.rl import train_rl
from mirrorl.train.trainer import LocalTrainer

sys.path.insert(0, str(Path(__file__).parent.parent))  # scripted.py
from scripted import ScriptedGenerator  # noqa: E402

# 3 groups per iteration in 2 mini-batches (2 groups, then 1): the second leaves one rank without a group
SETTINGS = ["rl.iterations=3", "rl.problems_per_iteration=3", "algo.num_samples=4", "rl.grad_steps=2", "rl.lr=1e-3",
            "run.tensorboard=false"]


def _run(tmp_path, trainer, tokenizer, cfg, name):
    logger = MetricsLogger(tmp_path / name, "rl", tensorboard=False)
    train_rl(trainer, ScriptedGenerator(tokenizer), GuardedReward(get_reward("chain_sum")), tokenizer,
             make_split(30, seed=5), cfg, logger)
    logger.close()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_learner_ranks_give_the_weights_of_one_process(tmp_path, tiny_policy_dir, local_ray, strategy):
    model, tokenizer = load_policy(str(tiny_policy_dir), torch.device("cpu"))
    single = load_config(None, SETTINGS)
    _run(tmp_path, LocalTrainer.from_config(model, tokenizer, single), tokenizer, single, "single")

    # FSDP2's shards cannot generate (colocated): its one rollout worker stays idle, the scripted generator rolls out
    placement = ["distributed.placement=colocated", "distributed.rollout_workers=2"] if strategy == "ddp" else [
        "distributed.rollout_workers=1"]
    cfg = load_config(None, [*SETTINGS, "run.backend=ray", "distributed.learners=2", f"distributed.strategy={strategy}",
                             *placement])
    with ray_cluster(cfg, str(tiny_policy_dir)) as run:
        group = run.trainer
        _run(tmp_path, group, tokenizer, cfg, strategy)
        weights = dict(group.state_dict())
        digests = group.digests()
        group.export(tmp_path / "exported")
    if strategy == "ddp":
        assert len(set(digests)) == 1  # the ranks agree
    worst = max(float((weights[name] - value).abs().max()) for name, value in model.state_dict().items())
    print(f"max |{strategy} - single|", worst)
    assert worst < 1e-6, worst
    assert any(not value.equal(weights[name]) for name, value in load_policy(
        str(tiny_policy_dir), torch.device("cpu"))[0].state_dict().items())  # and they did train
    exported = load_policy(str(tmp_path / "exported"), torch.device("cpu"))[0].state_dict()
    assert exported.keys() == model.state_dict().keys()
    assert all(exported[name].equal(weights[name]) for name in weights)  # gathered shards written as one checkpoint
