"""The k1.5 report's Figure 7 on the user's own models: every long2short method from one long model,
evaluated with one protocol (`mirrorl long2short RUN_DIR`).

Rows, each a model evaluated on the run's held-out split (`eval`: n samples per problem, its
temperature and length), with the seconds its method took outside evaluation:

  long      the long-CoT model (RUN_DIR/rl/final, or `long2short.long_model`).
  short     the short-CoT model: `long2short.short_model`, else the long model fine-tuned on the
            built-in task's short traces (`data.trace_style=short`). Both share one tokenizer and
            architecture, as merging needs.
  merge     their weighted average (`long2short.merge_weight` on the long model), streamed.
  merge_rs  shortest rejection sampling from the merged model, then SFT on the kept responses of
            the merged model (or the long one: `long2short.rs_from`).
  dpo       DPO from the long model on pairs of its own samples (`dpo` section).
  rl        long2short RL: RL from the long model with the recipe's length penalty and maximum
            length (`rl`, `algo`, `rollout` sections; configs/long2short.yaml).

Every method works in RUN_DIR/long2short/<method>/ (its checkpoints, metrics and evaluation
samples). Written to RUN_DIR: long2short.json (the rows, which `mirrorl view` shows),
long2short.md (the table) and long2short.png (mean tokens against pass@1, one marker per method).

The report's figure compares the methods at their best setting; this runs each once at the given
settings. Does not: sweep settings per method, or scale out (each phase runs as `mirrorl sft|rl|dpo`
would, in this process or with `run.backend=ray` for RL).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mirrorl.config import Config
from mirrorl.eval.evaluate import EvalResult
from mirrorl.long2short.merge import merge_checkpoints
from mirrorl.recipes import long_policy, run_dpo, run_eval, run_rl, run_sft, run_shortest_rs
from mirrorl.train.metrics import console
from mirrorl.train.resume import Start


def _with(cfg: Config, output_dir: Path, **sections: dict[str, Any]) -> Config:
    """`cfg` writing to `output_dir`, with the given fields of its sections changed."""
    changes = {"run": cfg.run.model_copy(update={"output_dir": output_dir})}
    for name, fields in sections.items():
        changes[name] = getattr(cfg, name).model_copy(update=fields)
    return cfg.model_copy(update=changes)


def row(method: str, model: Path, result: EvalResult, seconds: float) -> dict[str, Any]:
    """One table row: a method's held-out figures and its cost."""
    return {
        "method": method, "pass1": result.pass1, "tokens": result.mean_tokens,
        "tokens_per_correct": result.tokens_per_correct,
        **{f"pass@{k}": value for k, value in result.pass_at_k.items() if k != "1"},
        **{f"maj@{k}": value for k, value in result.maj_at_k.items()},
        "seconds": round(seconds, 1), "model": str(model),
    }


def run_long2short(cfg: Config, run_dir: Path, start: Start = "new") -> list[dict[str, Any]]:
    """Run the methods of `long2short.methods` (see the module docstring); returns the table's rows."""
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist (run `mirrorl demo` first, or give "
                         "long2short.long_model and a directory to write to)")
    l2s = cfg.long2short
    if l2s.short_model is None and cfg.data.train_path is not None:
        raise ValueError("long2short: give long2short.short_model: without it the short model is trained on the "
                         "built-in task's short traces, which do not fit data.train_path")
    _same_split(cfg, run_dir / "config.yaml")
    long = Path(long_policy(_with(cfg, run_dir), "long2short.long_model"))
    work = run_dir / "long2short"
    rows: list[dict[str, Any]] = []

    def timed(make: Callable[[], Path]) -> tuple[Path, float]:
        began = time.perf_counter()
        return make(), time.perf_counter() - began

    def add(method: str, model: Path, seconds: float) -> None:
        result = run_eval(_with(cfg, work / method), model, method)
        rows.append(row(method, model, result, seconds))
        _write(run_dir, rows)

    add("long", long, 0.0)
    short, seconds = (Path(l2s.short_model), 0.0) if l2s.short_model else timed(lambda: run_sft(_with(
        cfg, work / "short", model={"path": str(long)}, data={"trace_style": "short"},
        sft={"steps": l2s.short_sft_steps, "lr": l2s.sft_lr}), start))
    add("short", short, seconds)
    merged, merge_seconds = work / "merge" / "model", 0.0
    if {"merge", "merge_rs"} & set(l2s.methods):
        began = time.perf_counter()
        merge_checkpoints([long, short], [l2s.merge_weight, 1 - l2s.merge_weight], merged,
                          overwrite=start != "new")
        merge_seconds = time.perf_counter() - began
    if "merge" in l2s.methods:
        add("merge", merged, merge_seconds)
    if "merge_rs" in l2s.methods:
        rs_cfg = _with(cfg, work / "merge_rs", rejection={"model": str(merged)})
        rows_path, sample_seconds = timed(lambda: run_shortest_rs(rs_cfg))
        tuned, sft_seconds = timed(lambda: run_sft(_with(
            rs_cfg, work / "merge_rs", model={"path": str(merged if l2s.rs_from == "merged" else long)},
            data={"train_path": str(rows_path)}, sft={"steps": l2s.rs_sft_steps, "lr": l2s.sft_lr}), start))
        add("merge_rs", tuned, merge_seconds + sample_seconds + sft_seconds)
    if "dpo" in l2s.methods:
        tuned, seconds = timed(lambda: run_dpo(_with(cfg, work / "dpo", dpo={"init_from": str(long)}), start))
        add("dpo", tuned, seconds)
    if "rl" in l2s.methods:
        tuned, seconds = timed(lambda: run_rl(_with(cfg, work / "rl", rl={"init_from": str(long)}), start))
        add("rl", tuned, seconds)
    paths = _write(run_dir, rows)
    console.print(f"long2short: {len(rows)} rows -> {', '.join(map(str, paths))}")
    return rows


# Settings that decide which problems the run trained on: held-out problems are held out only from those.
SPLIT = ("run.seed", "data.train_path", "data.eval_path", "data.num_sft", "data.num_rl")


def _same_split(cfg: Config, saved: Path) -> None:
    """ValueError when the run in `saved`'s directory trained on other problems than `cfg` would hold out from."""
    if not saved.is_file():
        return
    trained = yaml.safe_load(saved.read_text()) or {}
    for key in SPLIT:
        section, name = key.split(".")
        then, now = trained.get(section, {}).get(name), getattr(getattr(cfg, section), name)
        if then is not None and str(then) != str(now):
            raise ValueError(f"long2short: {saved.parent} was trained with {key}={then}, this comparison has "
                             f"{key}={now}: its held-out problems would not be held out from that run; "
                             f"pass {key}={then}")


def _write(run_dir: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """long2short.json, .md and .png from the rows so far (rewritten after each method)."""
    from mirrorl.plots import plot_long2short

    (run_dir / "long2short.json").write_text(json.dumps(rows, indent=2))
    (run_dir / "long2short.md").write_text(table(rows))
    return [run_dir / "long2short.json", run_dir / "long2short.md", plot_long2short(rows, run_dir / "long2short.png")]


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, with each method's tokens and pass@1 relative to the long model.

    >>> print(table([{"method": "long", "pass1": 0.9, "tokens": 80.0, "tokens_per_correct": 88.9, "seconds": 0.0},
    ...              {"method": "rl", "pass1": 0.89, "tokens": 60.0, "tokens_per_correct": None, "seconds": 95.0}]),
    ...       end="")
    | method | pass@1 | vs long | tokens | vs long | tokens per correct | seconds |
    | --- | ---: | ---: | ---: | ---: | ---: | ---: |
    | long | 0.900 | +0.000 | 80.0 | 1.00x | 88.9 | 0 |
    | rl | 0.890 | -0.010 | 60.0 | 0.75x | - | 95 |
    """
    long = next((r for r in rows if r["method"] == "long"), rows[0])
    extra = [key for key in rows[0] if key.startswith(("pass@", "maj@"))]
    head = ["method", "pass@1", "vs long", "tokens", "vs long", "tokens per correct", *extra, "seconds"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for r in rows:
        cells = [r["method"], f"{r['pass1']:.3f}", f"{r['pass1'] - long['pass1']:+.3f}", f"{r['tokens']:.1f}",
                 f"{r['tokens'] / long['tokens']:.2f}x",
                 "-" if r["tokens_per_correct"] is None else f"{r['tokens_per_correct']:.1f}",
                 *(f"{r[key]:.3f}" if r.get(key) is not None else "-" for key in extra), f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
