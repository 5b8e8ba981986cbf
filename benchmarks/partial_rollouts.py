"""Partial vs full rollouts on a heavy-tailed workload, side by side in one run (k1.5 sec. 4).

The workload is a policy whose responses are mostly short and sometimes ten times longer: the
tiny model is first fine-tuned (a couple of minutes on CPU) to answer a "short" prompt with 8-24
random letters and a "long" one (1 prompt in 10) with 160-240 letters. Then the same number of
iterations runs for each of two modes, interleaved iteration by iteration, with the same engine,
slots, new problems per iteration and sampling: full rollouts (every trajectory finishes in its
iteration, so each iteration lasts as long as its longest response) and partial rollouts (at most
`--budget` new tokens per trajectory per iteration; unfinished ones wait in the replay buffer and
continue next iteration, and a slot freed mid-iteration takes the next queued trajectory at once).
Weights do not change between iterations: this measures the rollout side only.

Both modes start the same problems (`--groups` new ones per iteration for `--iterations`
iterations); partial rollouts then run extra iterations without new problems until the replay
buffer is empty, so both complete the same problems and the comparison counts the parked long
tail's cost. Reported per mode: completed trajectories per second, the engine's idle slot
fraction, and the content statistics of the completed trajectories (mean length, fraction long)
that should match. The whole comparison runs `--repeats` times (the same seeded work each time)
and each mode's fastest run is reported, so a burst of machine noise does not decide the ratio.

Usage: python benchmarks/partial_rollouts.py [--iterations 30] [--budget 32] [--groups 8] [--k 4] [--slots 32]
                                             [--repeats 3]
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from mirrorl.config import ModelConfig, SamplingConfig, SFTConfig
from mirrorl.data.encode import encode_prompt, encode_response
from mirrorl.models import build_tiny, load_policy, save_policy
from mirrorl.rollout.engine import Engine
from mirrorl.rollout.partial import PartialRollouts
from mirrorl.train.metrics import MetricsLogger
from mirrorl.train.sft import SFTExample, train_sft

LONG_EVERY = 10


def prompt_text(index: int) -> str:
    return f"{'long' if index % LONG_EVERY == 0 else 'short'} #{index}"


def length_policy(args: argparse.Namespace, out_dir: Path):
    """The tiny model fine-tuned to the heavy-tailed length distribution (cached in `out_dir`)."""
    if (out_dir / "policy" / "config.json").is_file():
        model, tokenizer = load_policy(str(out_dir / "policy"), torch.device("cpu"))
        return model.eval(), tokenizer
    model, tokenizer = build_tiny(ModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=192), 0)
    rng = random.Random(0)
    examples = []
    for index in range(2000):
        length = rng.randint(160, 240) if index % LONG_EVERY == 0 else rng.randint(8, 24)
        letters = "".join(rng.choice("abcdefgh") for _ in range(length))
        examples.append(SFTExample(encode_prompt(tokenizer, prompt_text(index), True),
                                   encode_response(tokenizer, letters)))
    cfg = SFTConfig(steps=args.sft_steps, batch_size=32, lr=3e-3, max_len=300)
    logger = MetricsLogger(out_dir, "sft", tensorboard=False, wandb=False)
    train_sft(model, examples, cfg, tokenizer.pad_token_id, logger, seed=0)
    logger.close()
    save_policy(model, tokenizer, out_dir / "policy")
    return model.eval(), tokenizer


class Mode:
    """One way of rolling out (full or partial), advanced one iteration at a time."""

    def __init__(self, engine: Engine, tokenizer, args: argparse.Namespace, budget: int) -> None:
        self.engine, self.tokenizer, self.args = engine, tokenizer, args
        self.params = SamplingConfig(temperature=1.0, max_new_tokens=args.max_tokens,
                                     batch_size=args.slots, repeat={"enabled": False}).params()
        self.buffer = PartialRollouts(group_size=args.k, segment_budget=budget)
        self.next_problem, self.finished, self.idle, self.elapsed, self.iterations = 1, [], [], 0.0, 0

    def iteration(self, index: int, new_groups: int) -> None:
        for _ in range(new_groups):
            self.buffer.add(self.next_problem, encode_prompt(self.tokenizer, prompt_text(self.next_problem), True))
            self.next_problem += 1
        start = time.perf_counter()
        self.engine.update_weights(index, self.engine.model.state_dict())
        step = self.buffer.step(self.engine, self.params, seed=index)
        self.elapsed += time.perf_counter() - start
        self.idle.append(step.idle_fraction)
        self.iterations += 1
        self.finished += [t for group in step.groups for t in group]

    def report(self) -> dict:
        done = self.finished
        long_ones = [t for t in done if t.problem_index % LONG_EVERY == 0]
        short = [t for t in done if t.problem_index % LONG_EVERY]
        mean = lambda ts: round(sum(len(t.response_ids) for t in ts) / max(1, len(ts)), 1)  # noqa: E731
        return {
            "iterations": self.iterations,
            "completed_trajectories": len(done),
            "trajectories_per_second": round(len(done) / self.elapsed, 2),
            "idle_slot_fraction": round(sum(self.idle) / len(self.idle), 3),
            "mean_length": mean(done), "mean_length_short": mean(short), "mean_length_long": mean(long_ones),
            "long_fraction": round(len(long_ones) / len(done), 3),
            "seconds": round(self.elapsed, 2),
        }


def run_both(engine: Engine, tokenizer, args: argparse.Namespace) -> dict[str, Mode]:
    """Both modes on the same problems, interleaved iteration by iteration so machine noise hits both alike."""
    modes = {"full": Mode(engine, tokenizer, args, budget=0), "partial": Mode(engine, tokenizer, args, args.budget)}
    for index in range(args.iterations):
        for mode in modes.values():
            mode.iteration(index, args.groups)
    drain, index = modes["partial"], args.iterations  # finish what is parked, so both complete the same problems
    while drain.buffer.groups:
        drain.iteration(index, new_groups=0)
        index += 1
    return modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--slots", type=int, default=32, help="engine batch size")
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="whole comparisons run; each mode's fastest is kept")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench_partial")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = length_policy(args, Path(args.out))
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    best: dict[str, Mode] = {}
    for _ in range(args.repeats):  # the same work each time (seeded): keep each mode's fastest run
        for name, mode in run_both(engine, tokenizer, args).items():
            if name not in best or mode.elapsed < best[name].elapsed:
                best[name] = mode
    full, partial = best["full"].report(), best["partial"].report()
    ratio = partial["trajectories_per_second"] / full["trajectories_per_second"]
    print(f"full: {full['trajectories_per_second']} traj/s, idle {full['idle_slot_fraction']}; partial (budget "
          f"{args.budget}): {partial['trajectories_per_second']} traj/s, idle {partial['idle_slot_fraction']}; "
          f"ratio {ratio:.2f}")
    print(json.dumps({"benchmark": "partial_vs_full_rollouts", "iterations": args.iterations, "budget": args.budget,
                      "slots": args.slots, "new_groups_per_iteration": args.groups, "repeats": args.repeats,
                      "full": full, "partial": partial, "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
