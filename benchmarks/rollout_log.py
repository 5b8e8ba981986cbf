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

from distributed import policy_or_untrained, run  # benchmarks/distributed.py: the same RL run
from mirrorl.train import rollout_log

WRITES: list[float] = []


def timed_write(self: rollout_log.RolloutLog, iteration: int, records: list) -> None:
    began = time.perf_counter()
    untimed_write(self, iteration, records)
    WRITES.append(time.perf_counter() - began)


untimed_write = rollout_log.RolloutLog.write
rollout_log.RolloutLog.write = timed_write  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, default=None)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    off, on, records = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        policy = policy_or_untrained(args.policy, work)
        common = [f"rl.iterations={args.iterations}"]
        for index in range(args.rounds):  # each a mean over the iterations after the first
            off.append(run(policy, [*common, "rl.log_rollouts_every=0"], work / f"off{index}")["time_iteration"])
            on.append(run(policy, common, work / f"on{index}")["time_iteration"])
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
