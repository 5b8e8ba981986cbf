"""Agreement of the math verifier with labelled answer pairs, and its speed.

Runs every case of a JSONL file of labelled pairs (fields pred, gold, expected, category,
harness) through one MathVerifier and compares its verdict with `expected`. Each case's `harness`
names how its label was made; the declared options are honoured per call (match types, a literal
precision, a literal strict / allow_set_relation_comp; "already-extracted answers" harnesses read
the whole pred as the answer). Options written as a placeholder ("precision=precision") carry no
value in the data and keep the defaults. An error verdict counts as a disagreement.

Usage: python benchmarks/math_verifier.py [--data PATH] [--workers N] [--show-disagreements]
       [--ignore-harness]  (default settings for every case, to see what the declared options change)
Prints one JSON object as its last line: cases, agreement, errors, call-time percentiles,
throughput and per-category agreement.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

from mirrorl.config import MatchSettings, MathRewardConfig
from mirrorl.rewards.math_workers import MathVerifier

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT / ".." / "shared" / "data" / "math_equiv_cases.jsonl"


def settings_for_harness(harness: str) -> MatchSettings:
    """The MatchSettings a case's harness string declares (no per-case knowledge)."""
    options: dict[str, object] = {}
    if harness.startswith(("hendrycks:", "qwen:", "verl.")):  # compare already-extracted answers
        options["response_strategies"] = ["whole"]
    if (types := re.search(r"match_types=\[([^\]]*)\]", harness)) is not None:
        options["answer_formats"] = re.findall(r"'(latex|expr)'", types.group(1))
    elif "[Expr]" in harness:
        options["answer_formats"] = ["expr"]
    if (precision := re.search(r"precision=(\d+)", harness)) is not None:
        options["float_rounding"] = int(precision.group(1))
    for flag in ("strict", "allow_set_relation_comp"):
        if (value := re.search(rf"{flag}=(True|False)\b", harness)) is not None:
            options[flag] = value.group(1) == "True"
    return MatchSettings(**options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSONL file of labelled pairs")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: one per core)")
    parser.add_argument("--timeout", type=float, default=4.0, help="hard deadline per call, seconds")
    parser.add_argument("--show-disagreements", action="store_true", help="print each disagreeing case")
    parser.add_argument("--ignore-harness", action="store_true", help="default settings for every case")
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"--data {args.data}: no such file; pass the path of the labelled JSONL file")
    cases = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]

    config = MathRewardConfig(num_workers=args.workers, timeout_seconds=args.timeout)
    start = time.perf_counter()
    with MathVerifier(config) as verifier:
        startup_seconds = time.perf_counter() - start
        groups: dict[MatchSettings, list[int]] = defaultdict(list)
        for index, case in enumerate(cases):
            settings = MatchSettings() if args.ignore_harness else settings_for_harness(case["harness"])
            groups[settings].append(index)
        verdicts: list = [None] * len(cases)
        start = time.perf_counter()
        for settings, indices in groups.items():
            pairs = [(cases[i]["pred"], cases[i]["gold"]) for i in indices]
            for i, verdict in zip(indices, verifier.verify_batch(pairs, settings)):
                verdicts[i] = verdict
        wall_seconds = time.perf_counter() - start
        counters = verifier.counters()

    per_category: dict[str, list[bool]] = defaultdict(list)
    for index, (case, verdict) in enumerate(zip(cases, verdicts)):
        agrees = verdict.status != "error" and (verdict.status == "correct") == bool(case["expected"])
        per_category[case["category"]].append(agrees)
        if args.show_disagreements and not agrees:
            print(f"#{index} {case['category']} expected={case['expected']} got={verdict.status} "
                  f"extracted={verdict.extracted!r} {verdict.detail} | {case['harness'][:70]}")
    seconds = sorted(verdict.seconds for verdict in verdicts)
    agreement = sum(sum(v) for v in per_category.values()) / len(cases)
    print(json.dumps({
        "cases": len(cases),
        "agreement": round(agreement, 4),
        "errors": sum(verdict.status == "error" for verdict in verdicts),
        "max_call_seconds": round(seconds[-1], 4),
        "p50_call_seconds": round(statistics.median(seconds), 4),
        "p99_call_seconds": round(seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))], 4),
        "calls_per_second": round(len(cases) / wall_seconds, 1),
        "workers": verifier.num_workers,
        "startup_seconds": round(startup_seconds, 2),
        "counters": counters,
        "per_category_agreement": {name: round(sum(v) / len(v), 3) for name, v in sorted(per_category.items())},
    }))


if __name__ == "__main__":
    main()
