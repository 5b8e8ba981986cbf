"""Ablations on the embedded task, from one shared SFT warm start, side by side in one run.

  1. k1.5 mirror-descent loss vs the ReST-style positive-only baseline, same iterations;
  2. mirror descent with the k1.5 length penalty vs without: mean response length.

Usage: python benchmarks/ablation.py [--sft DIR] [--out DIR] [key=value overrides...]
Without --sft it first trains the SFT warm start of the demo config. Prints one JSON object as
its last line with held-out pass@1 and mean tokens of every arm, and the differences.
"""

from __future__ import annotations

import argparse
import json
import time

from mirrorl.config import load_config
from mirrorl.recipes import run_eval, run_rl, run_sft

ARMS = {
    "mirror_descent": ["algo.loss=mirror_descent"],
    "rest": ["algo.loss=rest"],
    "mirror_descent_length_penalty": ["algo.loss=mirror_descent", "algo.length_penalty.weight=0.5",
                                      "algo.length_penalty.warmup_iterations=10"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", default=None, help="SFT checkpoint to start every arm from")
    parser.add_argument("--out", default="runs/ablation", help="where the arms write")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every arm")
    args = parser.parse_args()
    base = ["run.tensorboard=false", f"run.output_dir={args.out}", *args.overrides]
    sft = args.sft or str(run_sft(load_config(None, base)))
    results: dict[str, dict] = {}
    for name, extra in ARMS.items():
        cfg = load_config(None, [*base, f"run.output_dir={args.out}/{name}", f"rl.init_from={sft}", *extra])
        start = time.perf_counter()
        result = run_eval(cfg, run_rl(cfg), "rl")
        results[name] = {"pass1": result.pass1, "mean_tokens": result.mean_tokens,
                         "rl_seconds": round(time.perf_counter() - start, 1)}
    sft_eval = run_eval(load_config(None, base), sft, "sft")
    md, rest, lp = (results[k] for k in ARMS)
    print(json.dumps({
        "sft": {"pass1": sft_eval.pass1, "mean_tokens": sft_eval.mean_tokens},
        **results,
        "mirror_descent_minus_rest_pass1": md["pass1"] - rest["pass1"],
        "length_penalty_token_ratio": lp["mean_tokens"] / md["mean_tokens"],
    }))


if __name__ == "__main__":
    main()
