"""Recipes: thin functions that wire config, data, model and trainers for each CLI command.

Run directory layout (`run.output_dir`):
  config.yaml              the resolved config
  sft/final/               SFT policy (HF format)          sft_metrics.jsonl
  rl/final/                RL policy (HF format)           rl_metrics.jsonl
  checkpoints/sft|rl/      step-NNNNNN/ checkpoints and `latest` (see train/resume.py)
  eval_<name>.json         evaluation results              tensorboard/<phase>/
  eval_<name>_samples.jsonl  every evaluated response      rollouts/<iteration>.jsonl  RL samples
  curves.png, summary.json, report.html (demo; `mirrorl view` for any run)

`start` of sft, rl and demo: "new" refuses a directory that already holds the phase, "resume"
continues from its newest checkpoint, "overwrite" replaces it. Every input (config, policy, data,
reward) is loaded and checked before anything in the directory changes.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from mirrorl.config import Config, dump_config
from mirrorl.data.encode import encode_prompt, encode_response
from mirrorl.data.io import load_split
from mirrorl.eval.evaluate import EvalResult, evaluate
from mirrorl.models import build_tiny, first_line, load_policy, load_tokenizer, pick_device, pick_dtype, save_policy
from mirrorl.rewards.batch import GuardedReward
from mirrorl.rewards.registry import get_reward
from mirrorl.rollout.engine import Engine
from mirrorl.train.checkpoint import Checkpoint, CheckpointStore, find_latest
from mirrorl.train.metrics import MetricsLogger, console
from mirrorl.train.resume import (
    MODEL_DIR,
    Checkpointing,
    Start,
    check_settings,
    checkpoint_root,
    clear_phase,
    open_phase,
)
from mirrorl.train.rl import RLResult, train_rl
from mirrorl.train.rollout_log import write_jsonl
from mirrorl.train.sft import SFTExample, train_sft
from mirrorl.train.trainer import LocalTrainer

# Settings a resumed phase must keep: its saved data cursor, batch order or replay buffer depend on
# them. (The loops also compare a digest of the examples or problems, which catches a changed file.)
FIXED = {
    "sft": ("data.train_path", "data.prompt_field", "data.solution_field", "data.num_sft", "data.use_chat_template",
            "sft.batch_size", "sft.bucket_window", "sft.max_len"),
    "rl": ("data.train_path", "data.prompt_field", "data.answer_field", "data.num_rl", "algo.num_samples",
           "sampler.name"),
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(cfg: Config) -> Path:
    """Seed, set threads and create the run directory. Only mirrorl's own progress lines show:
    transformers' bars ('Loading weights', 'Writing model shards') are switched off."""
    hf_logging.disable_progress_bar()
    seed_everything(cfg.run.seed)
    if cfg.run.num_threads:
        torch.set_num_threads(cfg.run.num_threads)
    out = cfg.run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    return out


def open_policy(cfg: Config, path: str | Path | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The policy at `path`, or the freshly built tiny model when `path` is None."""
    device = pick_device(cfg.run.device)
    if path is None:
        model, tokenizer = build_tiny(cfg.model, cfg.run.seed)
        return model.to(device=device, dtype=pick_dtype(cfg.run.dtype, device)), tokenizer
    text = str(path)
    # A hub repo id is 'name' or 'namespace/name': anything else that does not exist is a missing directory.
    if not Path(text).exists() and (text.startswith(("/", ".", "~")) or text.count("/") > 1):
        raise ValueError(f"model directory {text} does not exist")
    try:
        return load_policy(text, device, pick_dtype(cfg.run.dtype, device))
    except RuntimeError as err:  # transformers raises it for weights that do not fit config.json
        line = first_line(err)
        what = "its weights do not fit the shapes in its config.json" if "mismatched" in line else line
        raise ValueError(f"cannot load model {text!r}: {what}") from err


def _phase_start(cfg: Config, phase: str, start: Start, total: int) -> Checkpoint | None:
    """Apply the run-directory rule of `start`; check a resume against its checkpoint. Changes nothing."""
    resume = open_phase(cfg.run.output_dir, phase, start)
    if resume is None:
        return None
    changed = check_settings(resume.manifest.get("config"), cfg.model_dump(mode="json"), FIXED[phase], resume.path)
    if resume.step > total:
        raise ValueError(f"cannot resume from {resume.path}: it is at step {resume.step}, past "
                         f"{phase}.{'steps' if phase == 'sft' else 'iterations'}={total}")
    console.print(f"{phase}: resuming from {resume.path} (step {resume.step} of {total})"
                  + (f"; changed since: {', '.join(changed)}" if changed else ""))
    if resume.step == total:
        unit = "steps" if phase == "sft" else "iterations"
        console.print(f"{phase}: the checkpoint already completes all {total} {unit}; nothing to train")
    return resume


def _begin(cfg: Config, phase: str, start: Start, resume: Checkpoint | None, every: int,
           tokenizer: PreTrainedTokenizerBase) -> tuple[Checkpointing, MetricsLogger]:
    """After every input has loaded: clear an overwritten phase, record the config, open store and logger."""
    out = cfg.run.output_dir
    if start == "overwrite":
        clear_phase(out, phase)
    (out / "config.yaml").write_text(dump_config(cfg))
    store = CheckpointStore(checkpoint_root(out, phase), cfg.checkpoint.keep_last, cfg.checkpoint.keep_every)
    checkpointing = Checkpointing(store, tokenizer, cfg.model_dump(mode="json"), every, resume)
    logger = MetricsLogger(out, phase, cfg.run.tensorboard, cfg.run.wandb,
                           resume_step=None if resume is None else resume.step)
    return checkpointing, logger


def run_sft(cfg: Config, start: Start = "new") -> Path:
    """Long-CoT SFT from `model.path` (or the tiny model from scratch); returns the saved policy."""
    out = prepare(cfg)
    resume = _phase_start(cfg, "sft", start, cfg.sft.steps)
    problems = [p for p in load_split(cfg.data, "sft", cfg.run.seed) if p.solution]
    if not problems:
        raise ValueError(f"no SFT data: the rows need a {cfg.data.solution_field!r} field with the response")
    model, tokenizer = open_policy(cfg, cfg.model.path if resume is None else resume.path / MODEL_DIR)
    examples = [
        SFTExample(encode_prompt(tokenizer, p.prompt, cfg.data.use_chat_template),
                   encode_response(tokenizer, p.solution))
        for p in problems
    ]
    checkpointing, logger = _begin(cfg, "sft", start, resume, cfg.sft.save_every, tokenizer)
    try:
        result = train_sft(model, examples, cfg.sft, tokenizer.pad_token_id, logger, cfg.run.seed, checkpointing)
    finally:
        logger.close()
    save_policy(model, tokenizer, out / "sft" / "final")
    console.print(f"sft: {result.steps} steps, final loss {result.final_loss:.3f}, "
                  f"{result.tokens_per_second:.0f} tokens/s -> {out / 'sft' / 'final'}")
    return out / "sft" / "final"


def run_rl(cfg: Config, start: Start = "new") -> Path:
    """RL from `rl.init_from`, else the run's SFT output, else `model.path`; returns the saved policy."""
    # built before any work, so a misspelt reward fails at once; a reward pool builds it on its own machines
    pooled = cfg.run.backend == "ray" and cfg.distributed.reward_workers > 0
    reward = None if pooled else GuardedReward(get_reward(cfg.rl.reward, cfg.rewards))
    out = prepare(cfg)
    resume = _phase_start(cfg, "rl", start, cfg.rl.iterations)
    if resume is not None:
        policy = resume.path / MODEL_DIR
    else:
        policy = cfg.rl.init_from or (out / "sft" / "final" if (out / "sft" / "final").is_dir() else cfg.model.path)
    if policy is None:
        raise ValueError("rl needs a starting policy: set rl.init_from or model.path, or run `mirrorl sft` first")
    problems = load_split(cfg.data, "rl", cfg.run.seed)
    final = out / "rl" / "final"
    if cfg.run.backend == "ray":
        result = _run_rl_on_ray(cfg, start, resume, str(policy), reward, problems)
    else:
        model, tokenizer = open_policy(cfg, policy)
        trainer = LocalTrainer.from_config(model, tokenizer, cfg)
        generator = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)  # colocated: the trainer's weights
        checkpointing, logger = _begin(cfg, "rl", start, resume, cfg.rl.save_every, tokenizer)
        try:
            result = train_rl(trainer, generator, reward, tokenizer, problems, cfg, logger, checkpointing)
        finally:
            logger.close()
        trainer.export(final)
    console.print(f"rl: {result.iterations} iterations, last training accuracy {result.final_accuracy:.3f} -> {final}")
    return final


def _run_rl_on_ray(cfg: Config, start: Start, resume: Checkpoint | None, policy: str,
                   reward: GuardedReward | None, problems: list) -> RLResult:
    """The same loop with rollout workers and a learner group as Ray actors (`mirrorl.distributed`);
    `reward` None: scored by the cluster's reward pool."""
    try:
        from mirrorl.distributed.cluster import ray_cluster
    except ImportError as err:
        raise ValueError(f"run.backend=ray needs Ray ({err.name} is missing): pip install 'mirrorl[ray]'") from None
    tokenizer = load_tokenizer(policy)
    with ray_cluster(cfg, policy) as run:
        checkpointing, logger = _begin(cfg, "rl", start, resume, cfg.rl.save_every, tokenizer)
        try:
            result = train_rl(run.trainer, run.generator, reward or GuardedReward(run.reward), tokenizer, problems,
                              cfg, logger, checkpointing)
        finally:
            logger.close()
        run.trainer.export(cfg.run.output_dir / "rl" / "final")
    return result


def run_eval(cfg: Config, checkpoint: str | Path, name: str) -> EvalResult:
    """Evaluate a policy on the held-out split and write `eval_<name>.json` and its samples,
    `eval_<name>_samples.jsonl`."""
    reward = GuardedReward(get_reward(cfg.rl.reward, cfg.rewards))
    out = prepare(cfg)
    model, tokenizer = open_policy(cfg, checkpoint)
    problems = load_split(cfg.data, "eval", cfg.run.seed)
    temperature = cfg.rollout.temperature if cfg.eval.temperature is None else cfg.eval.temperature
    params = cfg.rollout.params(temperature=temperature)
    generator = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    result = evaluate(generator, tokenizer, problems, reward, params, cfg.eval.num_samples, cfg.eval.greedy,
                      cfg.data.use_chat_template, cfg.run.seed)
    (out / f"eval_{name}.json").write_text(json.dumps({"checkpoint": str(checkpoint), **result.as_dict()}, indent=2))
    write_jsonl(out / f"eval_{name}_samples.jsonl", result.records)
    greedy = "-" if result.greedy_accuracy is None else f"{result.greedy_accuracy:.3f}"
    console.print(f"eval {name}: pass@1 {result.pass1:.3f} (n={result.num_samples}), greedy {greedy}, "
                  f"mean tokens {result.mean_tokens:.1f} on {result.num_problems} problems")
    if result.unscored:
        console.print(f"eval {name}: {result.unscored} responses unscored (the reward returned None or raised), "
                      f"left out of the accuracies" + (f"; first error: {result.first_reward_error}"
                                                       if result.first_reward_error else ""))
    return result


def _demo_start(cfg: Config, phase: str, start: Start) -> Start:
    """`demo --resume` continues a phase that has a checkpoint and starts the others afresh."""
    if start == "resume" and find_latest(checkpoint_root(cfg.run.output_dir, phase), checksums=False) is None:
        return "new"
    return start


def run_demo(cfg: Config, start: Start = "new") -> dict:
    """The embedded default end to end: SFT from scratch, eval, RL, eval; writes summary.json."""
    from mirrorl.plots import plot_run
    from mirrorl.view import write_report

    began = time.perf_counter()
    sft_path = run_sft(cfg, _demo_start(cfg, "sft", start))
    sft_eval = run_eval(cfg, sft_path, "sft")
    rl_cfg = cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"init_from": str(sft_path)})})
    rl_path = run_rl(rl_cfg, _demo_start(cfg, "rl", start))
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
        "wall_seconds": time.perf_counter() - began,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_run(out, summary)
    report = write_report(out)
    console.print(f"demo: pass@1 {summary['sft_accuracy']:.3f} after SFT -> {summary['rl_accuracy']:.3f} after RL, "
                  f"mean tokens {summary['sft_mean_tokens']:.1f} -> {summary['rl_mean_tokens']:.1f}, "
                  f"{summary['wall_seconds']:.0f} s. See {report} (the samples), {out / 'curves.png'} and "
                  f"{out / 'summary.json'}")
    return summary
