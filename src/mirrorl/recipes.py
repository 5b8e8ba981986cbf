"""Recipes: thin functions that wire config, data, model and trainers for each CLI command.

Run directory layout (`run.output_dir`):
  config.yaml              the resolved config
  sft/final/               SFT policy (HF format)          sft_metrics.jsonl
  rl/final/, rl/iteration-N/  RL policies (HF format)      rl_metrics.jsonl
  eval_<name>.json         evaluation results              tensorboard/<phase>/
  curves.png, summary.json (demo)
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mirrorl.config import Config, dump_config
from mirrorl.data.encode import encode_prompt, encode_response
from mirrorl.data.io import load_split
from mirrorl.eval.evaluate import EvalResult, evaluate
from mirrorl.models import TinyModelSpec, build_tiny, load_policy, pick_device, pick_dtype, save_policy
from mirrorl.rewards.registry import get_reward
from mirrorl.train.metrics import MetricsLogger, console
from mirrorl.train.rl import train_rl
from mirrorl.train.sft import SFTExample, train_sft


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(cfg: Config) -> Path:
    """Seed, set threads, create the run directory and record the resolved config."""
    seed_everything(cfg.run.seed)
    if cfg.run.num_threads:
        torch.set_num_threads(cfg.run.num_threads)
    out = cfg.run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    return out


def open_policy(cfg: Config, path: str | Path | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The policy at `path`, or the freshly built tiny model when `path` is None."""
    device = pick_device(cfg.run.device)
    if path is None:
        m = cfg.model
        spec = TinyModelSpec(m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size, m.max_positions)
        model, tokenizer = build_tiny(spec, cfg.run.seed)
        return model.to(device=device, dtype=pick_dtype(cfg.run.dtype, device)), tokenizer
    return load_policy(str(path), device, pick_dtype(cfg.run.dtype, device))


def run_sft(cfg: Config) -> Path:
    """Long-CoT SFT from `model.path` (or the tiny model from scratch); returns the saved policy."""
    out = prepare(cfg)
    model, tokenizer = open_policy(cfg, cfg.model.path)
    problems = [p for p in load_split(cfg.data, "sft", cfg.run.seed) if p.solution]
    if not problems:
        raise ValueError(f"no SFT data: the rows need a {cfg.data.solution_field!r} field with the response")
    examples = [
        SFTExample(encode_prompt(tokenizer, p.prompt, cfg.data.use_chat_template), encode_response(tokenizer, p.solution))
        for p in problems
    ]
    logger = MetricsLogger(out, "sft", cfg.run.tensorboard, cfg.run.wandb)
    result = train_sft(model, examples, cfg.sft, tokenizer.pad_token_id, logger, cfg.run.seed)
    logger.close()
    save_policy(model, tokenizer, out / "sft" / "final")
    console.print(f"sft: {result.steps} steps, final loss {result.final_loss:.3f}, "
                  f"{result.tokens_per_second:.0f} tokens/s -> {out / 'sft' / 'final'}")
    return out / "sft" / "final"


def run_rl(cfg: Config) -> Path:
    """RL from `rl.init_from`, else the run's SFT output, else `model.path`; returns the saved policy."""
    get_reward(cfg.rl.reward)  # a misspelt reward fails before any work
    out = prepare(cfg)
    start = cfg.rl.init_from or (out / "sft" / "final" if (out / "sft" / "final").is_dir() else cfg.model.path)
    if start is None:
        raise ValueError("rl needs a starting policy: set rl.init_from or model.path, or run `mirrorl sft` first")
    model, tokenizer = open_policy(cfg, start)
    problems = load_split(cfg.data, "rl", cfg.run.seed)
    logger = MetricsLogger(out, "rl", cfg.run.tensorboard, cfg.run.wandb)
    result = train_rl(model, tokenizer, problems, cfg, logger, out / "rl")
    logger.close()
    save_policy(model, tokenizer, out / "rl" / "final")
    console.print(f"rl: {result.iterations} iterations, last training accuracy {result.final_accuracy:.3f} "
                  f"-> {out / 'rl' / 'final'}")
    return out / "rl" / "final"


def run_eval(cfg: Config, checkpoint: str | Path, name: str) -> EvalResult:
    """Evaluate a policy on the held-out split and write `eval_<name>.json`."""
    out = prepare(cfg)
    model, tokenizer = open_policy(cfg, checkpoint)
    problems = load_split(cfg.data, "eval", cfg.run.seed)
    result = evaluate(model, tokenizer, problems, get_reward(cfg.rl.reward), cfg.eval, cfg.rollout,
                      cfg.data.use_chat_template, cfg.run.seed)
    (out / f"eval_{name}.json").write_text(json.dumps({"checkpoint": str(checkpoint), **result.as_dict()}, indent=2))
    greedy = "-" if result.greedy_accuracy is None else f"{result.greedy_accuracy:.3f}"
    console.print(f"eval {name}: pass@1 {result.pass1:.3f} (n={result.num_samples}), greedy {greedy}, "
                  f"mean tokens {result.mean_tokens:.1f} on {result.num_problems} problems")
    return result


def run_demo(cfg: Config) -> dict:
    """The embedded default end to end: SFT from scratch, eval, RL, eval; writes summary.json."""
    from mirrorl.plots import plot_run

    start = time.perf_counter()
    sft_path = run_sft(cfg)
    sft_eval = run_eval(cfg, sft_path, "sft")
    rl_path = run_rl(cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"init_from": str(sft_path)})}))
    rl_eval = run_eval(cfg, rl_path, "rl")
    out = cfg.run.output_dir
    summary = {
        "sft_accuracy": sft_eval.pass1,
        "rl_accuracy": rl_eval.pass1,
        "sft_greedy_accuracy": sft_eval.greedy_accuracy,
        "rl_greedy_accuracy": rl_eval.greedy_accuracy,
        "sft_mean_tokens": sft_eval.mean_tokens,
        "rl_mean_tokens": rl_eval.mean_tokens,
        "sft_pass1_by_difficulty": sft_eval.pass1_by_difficulty,
        "rl_pass1_by_difficulty": rl_eval.pass1_by_difficulty,
        "eval_problems": rl_eval.num_problems,
        "eval_samples_per_problem": rl_eval.num_samples,
        "seed": cfg.run.seed,
        "wall_seconds": time.perf_counter() - start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_run(out, summary)
    console.print(f"demo: pass@1 {summary['sft_accuracy']:.3f} after SFT -> {summary['rl_accuracy']:.3f} after RL, "
                  f"mean tokens {summary['sft_mean_tokens']:.1f} -> {summary['rl_mean_tokens']:.1f}, "
                  f"{summary['wall_seconds']:.0f} s. See {out / 'curves.png'} and {out / 'summary.json'}")
    return summary
