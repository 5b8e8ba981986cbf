"""The cost of writing the samples: the demo's RL iterations with rollout logs at the default volume
and without, side by side from the same policy and seeds.

Runs `--iterations` iterations of the demo's RL loop twice in this process, `--rounds` times
alternately (off, on, off, on, ...), and reports the mean seconds per iteration of each (the first
iteration of a run is left out: warm-up), their ratio, and the seconds spent writing
`rollouts/{iteration}.jsonl` (timed inside the logged runs) with its share of the iteration.

Usage: python benchmarks/rollout_log.py [--policy runs/demo/sft/final] [--iterations 10] [--rounds 2]
Without --policy the demo's model architecture is used untrained. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mirrorl.config import load_config
from mirrorl.data.io import load_split
from mirrorl.models import build_tiny, load_policy, save_policy
from mirrorl.rewards.batch import GuardedReward
from mirrorl.rewards.registry import get_reward
from mirrorl.rollout.engine import Engine
from mirrorl.train import rollout_log
from mirrorl.train.metrics import MetricsLogger
from mirrorl.train.rl import train_rl
from mirrorl.train.trainer import LocalTrainer

WRITES: list[float] = []


def timed_write(self: rollout_log.RolloutLog, iteration: int, records: list) -> None:
    began = time.perf_counter()
    untimed_write(self, iteration, records)
    WRITES.append(time.perf_counter() - began)


untimed_write = rollout_log.RolloutLog.write
rollout_log.RolloutLog.write = timed_write  # type: ignore[method-assign]


def run(policy: Path, overrides: list[str], out: Path) -> list[float]:
    """Seconds per iteration after the first."""
    cfg = load_config(None, [f"run.output_dir={out}", "run.tensorboard=false", *overrides])
    model, tokenizer = load_policy(str(policy), torch.device("cpu"))
    logger = MetricsLogger(out, "rl", tensorboard=False)
    train_rl(LocalTrainer.from_config(model, tokenizer, cfg), Engine(model, tokenizer.eos_token_id,
             tokenizer.pad_token_id), GuardedReward(get_reward(cfg.rl.reward, cfg.rewards)), tokenizer,
             load_split(cfg.data, "rl", cfg.run.seed), cfg, logger)
    logger.close()
    return [json.loads(line)["time_iteration"] for line in (out / "rl_metrics.jsonl").read_text().splitlines()][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, default=None)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    off, on, records = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        policy = args.policy
        if policy is None:
            policy = work / "policy"
            save_policy(*build_tiny(load_config().model, 0), policy)
        common = [f"rl.iterations={args.iterations}"]
        for index in range(args.rounds):
            off += run(policy, [*common, "rl.log_rollouts_every=0"], work / f"off{index}")
            on += run(policy, common, work / f"on{index}")
            records += sum(len(path.read_text().splitlines()) for path in (work / f"on{index}" / "rollouts").iterdir())
    print(json.dumps({
        "benchmark": "rollout_log", "policy": str(args.policy or "untrained demo model"),
        "iterations": args.iterations, "rounds": args.rounds, "records_written": records,
        "seconds_per_iteration_off": round(statistics.mean(off), 4),
        "seconds_per_iteration_on": round(statistics.mean(on), 4),
        "ratio_on_to_off": round(statistics.mean(on) / statistics.mean(off), 4),
        "write_seconds_mean": round(statistics.mean(WRITES), 5),
        "write_share_of_iteration": round(statistics.mean(WRITES) / statistics.mean(on), 5),
    }))


if __name__ == "__main__":
    main()
