"""The RL loop through its seams: a user-defined generator and the in-process trainer, no change to `train_rl`."""

import json
import sys
from pathlib import Path

from mirrorl.config import load_config
from mirrorl.data.tasks import make_split
from mirrorl.rewards.batch import GuardedReward
from mirrorl.rewards.registry import get_reward
from mirrorl.train.metrics import MetricsLogger
from mirrorl.train.rl import train_rl
from mirrorl.train.trainer import LocalTrainer

sys.path.insert(0, str(Path(__file__).parent.parent))  # scripted.py
from scripted import ScriptedGenerator  # noqa: E402


def test_a_user_defined_generator_drives_train_rl(tmp_path, tiny_model):
    model, tokenizer = tiny_model
    cfg = load_config(None, ["rl.iterations=4", "rl.problems_per_iteration=3", "algo.num_samples=4", "rl.lr=1e-3",
                             "run.tensorboard=false"])
    trainer = LocalTrainer.from_config(model, tokenizer, cfg)
    generator = ScriptedGenerator(tokenizer, right=0.5)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    logger = MetricsLogger(tmp_path, "rl", tensorboard=False)
    result = train_rl(trainer, generator, GuardedReward(get_reward("chain_sum")), tokenizer, make_split(30, seed=5),
                      cfg, logger)
    logger.close()
    assert result.iterations == 4
    assert generator.updates == [0, 1, 2, 3]  # version i is published before iteration i rolls out
    assert generator.calls == [(12, 1.0, i) for i in range(4)]  # 3 problems x 4 samples, at version i
    rows = [json.loads(line) for line in (tmp_path / "rl_metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    assert all(0 < row["accuracy"] < 1 for row in rows)  # the script answers right about half the time
    assert all(row["off_policy_token_fraction"] == 0 and row["loss"] > 0 for row in rows)
    assert any(not p.equal(before[name]) for name, p in model.named_parameters())  # the trainer stepped
