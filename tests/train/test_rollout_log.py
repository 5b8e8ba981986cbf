"""The samples themselves: `rollouts/{iteration}.jsonl` as the loop writes them, readable by verl-style readers."""

import json

import pytest
import torch

from mirrorl.config import load_config
from mirrorl.data.tasks import make_split
from mirrorl.models import load_policy
from mirrorl.rewards.batch import GuardedReward
from mirrorl.rewards.registry import get_reward
from mirrorl.rollout.engine import Engine
from mirrorl.train.metrics import MetricsLogger
from mirrorl.train.rl import train_rl
from mirrorl.train.rollout_log import RolloutLog
from mirrorl.train.trainer import LocalTrainer


def verl_style_read(path):
    """What verl's rollout viewer takes from a line: these five fields and nothing else."""
    rows = []
    for line in path.read_text().splitlines():
        data = json.loads(line)
        rows.append((data["input"], data["output"], data["gts"], data["score"], data["step"]))
    return rows


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, tiny_policy_dir):
    """5 iterations with partial rollouts (budget 8 of 24 tokens: trajectories span policy versions),
    every second iteration logged, 2 groups of 3 samples each, with log-probs."""
    out = tmp_path_factory.mktemp("run")
    model, tokenizer = load_policy(str(tiny_policy_dir), torch.device("cpu"))
    cfg = load_config(None, ["rl.iterations=5", "rl.problems_per_iteration=3", "algo.num_samples=3", "rl.lr=1e-3",
                             "rollout.max_new_tokens=24", "rl.segment_budget=8", "rl.log_rollouts_every=2",
                             "rl.log_rollout_groups=2", "rl.log_logprobs=true", "algo.length_penalty.weight=0.2",
                             "run.tensorboard=false"])
    logger = MetricsLogger(out, "rl", tensorboard=False)
    train_rl(LocalTrainer.from_config(model, tokenizer, cfg), Engine(model, tokenizer.eos_token_id,
             tokenizer.pad_token_id), GuardedReward(get_reward("chain_sum")), tokenizer, make_split(30, seed=5), cfg,
             logger)
    logger.close()
    return out


def test_logged_iterations_hold_their_samples_in_verl_readable_lines(logged_run):
    files = sorted((logged_run / "rollouts").glob("*.jsonl"), key=lambda path: int(path.stem))
    assert [path.stem for path in files] == ["0", "2", "4"]  # every second iteration
    assert not verl_style_read(files[0])  # no trajectory of 24 tokens finishes in one segment of 8: logged empty
    for path in files[1:]:
        rows = verl_style_read(path)
        assert rows and all(isinstance(text, str) for row in rows for text in row[:3])
        assert all(isinstance(score, float) and step == int(path.stem) for *_, score, step in rows)
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert len({record["group"] for record in records}) <= 2
        for record in records:
            parts = record["reward"] + record["repeat_penalty"] + record["length_reward"]
            assert record["score"] == pytest.approx(parts)
            assert record["tokens"] == len(record["logprobs"]) == len(record["token_texts"])
            assert sum(tokens for _, tokens in record["versions"]) == record["tokens"]
            assert record["finish_reason"] in {"stop", "length", "budget", "repeat"}
            assert record["correct"] == (record["reward"] >= 1.0)
        for group in {record["group"] for record in records}:  # whole groups: the advantages are about their mean
            assert sum(record["advantage"] for record in records if record["group"] == group) == pytest.approx(0.0)


def test_a_sample_written_by_earlier_policies_carries_its_off_policy_weight(logged_run):
    records = [json.loads(line) for path in (logged_run / "rollouts").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    stale = [record for record in records if record["versions"][0][0] != record["step"]]
    assert stale, "partial rollouts with a budget of 8 continue trajectories across iterations"
    assert all(0 < record["off_policy_weight"] <= 1.0 for record in stale)  # truncated at is_cap = 1
    assert all(record["off_policy_weight"] is None for record in records if record not in stale)


def test_a_resumed_run_rewrites_the_iterations_after_its_checkpoint(tmp_path):
    rollouts = tmp_path / "rollouts"
    rollouts.mkdir()
    for iteration in range(5):
        (rollouts / f"{iteration}.jsonl").write_text("{}\n")
    RolloutLog(tmp_path, first=3, every=1)
    assert sorted(path.stem for path in rollouts.glob("*.jsonl")) == ["0", "1", "2"]
    (rollouts / "notes.jsonl").write_text("{}\n")  # not an iteration's: left alone
    RolloutLog(tmp_path, first=0, every=1)  # a new run starts without iteration files
    assert [path.name for path in rollouts.glob("*.jsonl")] == ["notes.jsonl"]
