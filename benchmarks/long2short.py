"""The k1.5 report's Figure 7 on the embedded task, over several `mirrorl demo` runs, against the targets.

For each run directory (made by `mirrorl demo run.seed=S run.output_dir=DIR`) runs
`mirrorl long2short DIR -c configs/long2short.yaml run.seed=S` in a fresh process, times it, and reads
its rows back. Every method of a run is evaluated on that run's held-out split, n = 4 samples per
problem at the training temperature. The targets, per run:

  rl        at least 20% fewer mean tokens than the long model, at most 2 points of pass@1 below it
  dpo       at least 10% fewer mean tokens, at most 3 points below
  merge     mean tokens between the short and the long model's
  merge_rs  pass@1 at least the merge's
  seconds   the whole command within 900 s

Usage: python benchmarks/long2short.py RUN_DIR:SEED [RUN_DIR:SEED ...] [--overwrite] [-- overrides...]
Prints one line per run as it finishes, then one JSON object as its last line: each run's rows, the
targets met or missed (with the margin), and the wall seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "long2short.yaml"


def targets(rows: list[dict], seconds: float) -> dict[str, dict]:
    """Each target's figures and whether it holds (a missing method gives no entry)."""
    by = {row["method"]: row for row in rows}
    long = by["long"]
    out: dict[str, dict] = {}

    def shorter(method: str, fewer: float, below: float) -> None:
        if method in by:
            ratio, drop = by[method]["tokens"] / long["tokens"], long["pass1"] - by[method]["pass1"]
            out[method] = {"token_ratio": round(ratio, 3), "pass1_drop": round(drop, 3),
                           "met": ratio <= 1 - fewer and drop <= below}

    shorter("rl", 0.20, 0.02)
    shorter("dpo", 0.10, 0.03)
    if "merge" in by:
        low, high = sorted((by["short"]["tokens"], long["tokens"]))
        out["merge"] = {"tokens": by["merge"]["tokens"], "met": low <= by["merge"]["tokens"] <= high}
    if "merge" in by and "merge_rs" in by:
        out["merge_rs"] = {"pass1_gain": round(by["merge_rs"]["pass1"] - by["merge"]["pass1"], 3),
                           "met": by["merge_rs"]["pass1"] >= by["merge"]["pass1"]}
    out["seconds"] = {"seconds": round(seconds, 1), "met": seconds <= 900}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="RUN_DIR:SEED of a finished `mirrorl demo`")
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier comparison in the run.")
    args, overrides = parser.parse_known_args()
    results = []
    for spec in args.runs:
        run_dir, _, seed = spec.rpartition(":")
        command = [sys.executable, "-m", "mirrorl.cli", "long2short", run_dir, "-c", str(RECIPE), f"run.seed={seed}",
                   *[o for o in overrides if o != "--"], *(["--overwrite"] if args.overwrite else [])]
        began = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - began
        rows = json.loads((Path(run_dir) / "long2short.json").read_text())
        result = {"run": run_dir, "seed": int(seed), "seconds": round(seconds, 1),
                  "targets": targets(rows, seconds), "rows": rows}
        print(json.dumps({key: result[key] for key in ("run", "seconds", "targets")}), flush=True)
        results.append(result)
    print(json.dumps({"benchmark": "long2short", "runs": results}))


if __name__ == "__main__":
    main()
