"""One process vs 2 rollout workers + 2 learner ranks on Ray: the same RL work, and its time split.

Runs `--iterations` iterations of the demo's RL loop (its problems, k, batch, sampling, loss) from
one policy three ways, one after the other: in one process (the colocated engine and the
in-process trainer), on Ray with separate placement (2 rollout workers, 2 learner ranks under
DDP, the weights synced through the object store after every optimize), the same with the
weights broadcast over a gloo group (`distributed.weight_sync=broadcast`), the same with FSDP2
learners (`distributed.strategy=fsdp2`), on Ray colocated (each learner rank also generates; no
weights move) and on Ray separate with asynchronous rollouts (`distributed.max_staleness=1`: the
next rollout runs during the optimize; its `time_rollout` is only the wait). `--runs` picks some of
them (the one process always runs). Every run starts from the same policy and seeds. Reported per run, as means over
the iterations after the first (which includes warm-up): seconds per iteration and its parts
(weight sync, rollout, reward, optimize), bytes synced, the sync's share of the iteration, and the
tokens generated per second (the rollout's own rate; on Ray the sum of the workers' rates); and
the ratio of each Ray run's iteration time to the single process's.

On this 2-core machine the Ray runs share the same two cores as the one process does, so they
measure overheads (process boundaries, serialisation, weight sync, smaller per-process batches),
not a speed-up: see docs/distributed.md for what scales on GPUs.

Usage: python benchmarks/distributed.py [--policy runs/demo/sft/final] [--iterations 10] [--runs broadcast,fsdp2]
Without --policy the demo's model architecture is used untrained (responses run to the maximum
length, so rollouts are longer than the demo's). Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from mirrorl.config import load_config
from mirrorl.data.io import load_split
from mirrorl.models import build_tiny, load_policy, save_policy
from mirrorl.rewards.batch import GuardedReward
from mirrorl.rewards.registry import get_reward
from mirrorl.rollout.engine import Engine
from mirrorl.train.metrics import MetricsLogger
from mirrorl.train.rl import train_rl
from mirrorl.train.trainer import LocalTrainer

PARTS = ("time_iteration", "time_sync", "time_rollout", "time_reward", "time_optimize")
RUNS = {  # on Ray with 2 rollout workers and 2 learner ranks, these settings besides
    "separate": [],
    "broadcast": ["distributed.weight_sync=broadcast"],
    "fsdp2": ["distributed.strategy=fsdp2"],
    "colocated": ["distributed.placement=colocated"],
    "async": ["distributed.max_staleness=1"],
}


def summarise(metrics: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()][1:]  # the first iteration warms up
    out = {key: statistics.mean(row[key] for row in rows) for key in PARTS}
    out["tokens_per_second"] = statistics.mean(
        sum(v for k, v in row.items() if k.startswith("worker") and k.endswith("_tokens_per_second"))
        or row["rollout_tokens_per_second"] for row in rows)
    out["sync_bytes"] = statistics.mean(row.get("sync_bytes", 0.0) for row in rows)
    out["sync_share"] = out["time_sync"] / out["time_iteration"]
    out["final_accuracy"] = rows[-1]["accuracy"]
    return {key: round(value, 4) for key, value in out.items()}


def policy_or_untrained(policy: Path | None, work: Path) -> Path:
    """`policy`, or the demo's model architecture untrained, saved under `work`."""
    if policy is not None:
        return policy
    save_policy(*build_tiny(load_config().model, 0), work / "policy")
    return work / "policy"


def run(policy: Path, overrides: list[str], out: Path) -> dict[str, float]:
    """The RL loop from `policy` with `overrides`, and the figures of its metrics (`summarise`)."""
    cfg = load_config(None, [f"run.output_dir={out}", "run.tensorboard=false", *overrides])
    problems = load_split(cfg.data, "rl", cfg.run.seed)
    reward = GuardedReward(get_reward(cfg.rl.reward, cfg.rewards))
    logger = MetricsLogger(out, "rl", tensorboard=False)
    try:
        if cfg.run.backend == "local":
            model, tokenizer = load_policy(str(policy), torch.device("cpu"))
            trainer = LocalTrainer.from_config(model, tokenizer, cfg)
            generator = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
            train_rl(trainer, generator, reward, tokenizer, problems, cfg, logger)
        else:
            from mirrorl.distributed.cluster import ray_cluster
            from mirrorl.models import load_tokenizer

            with ray_cluster(cfg, str(policy)) as cluster:
                train_rl(cluster.trainer, cluster.generator, reward, load_tokenizer(str(policy)), problems, cfg, logger)
    finally:
        logger.close()
    return summarise(out / "rl_metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, default=None)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"Ray runs, comma-separated, of: {', '.join(RUNS)}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        policy = policy_or_untrained(args.policy, work)
        common = [f"rl.iterations={args.iterations}"]
        ray = [*common, "run.backend=ray", "distributed.learners=2", "distributed.rollout_workers=2"]
        results = {"one_process": run(policy, common, work / "local")}
        for name in args.runs.split(","):
            results[f"ray_{name}"] = run(policy, [*ray, *RUNS[name]], work / name)
    base = results["one_process"]["time_iteration"]
    print(json.dumps({
        "benchmark": "distributed", "policy": str(args.policy or "untrained demo model"),
        "iterations": args.iterations, "torch_threads_one_process": torch.get_num_threads(), **results,
        **{f"iteration_time_ratio_{name.removeprefix('ray_')}": round(result["time_iteration"] / base, 3)
           for name, result in results.items() if name != "one_process"},
    }))


if __name__ == "__main__":
    main()
