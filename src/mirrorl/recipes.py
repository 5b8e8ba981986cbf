"""Recipes: thin functions that wire config, data, model and trainers for each CLI command.

Run directory layout (`run.output_dir`):
  config.yaml              the resolved config
  sft/final/               SFT policy (HF format)          sft_metrics.jsonl
  rl/final/                RL policy (HF format)           rl_metrics.jsonl
  checkpoints/sft|rl/      step-NNNNNN/ checkpoints and `latest` (see train/resume.py)
  eval_<name>.json         evaluation results              tensorboard/<phase>/
  eval_<name>_samples.jsonl  every evaluated response      rollouts/<iteration>.jsonl  RL samples
  dpo/final/, checkpoints/dpo/, dpo_metrics.jsonl, dpo_pairs.jsonl (+ _report.json)   `mirrorl dpo`
  shortest_rs.jsonl, shortest_rs_report.json   `mirrorl shortest-rs` (SFT rows)
  long2short/<method>/, long2short.json|.md|.png   `mirrorl long2short`
  curves.png, summary.json, report.html (demo; `mirrorl view` for any run)

`start` of sft, rl and demo: "new" refuses a directory that already holds the phase, "resume"
continues from its newest checkpoint, "overwrite" replaces it. Every input (config, policy, data,
reward) is loaded and checked before anything in the directory changes.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from mirrorl.config import Config, dump_config
from mirrorl.data.encode import encode_prompt, encode_response
from mirrorl.data.io import load_split, read_rows
from mirrorl.eval.evaluate import EvalResult, evaluate
from mirrorl.long2short.select import groups_of, preference_pairs, shortest_correct
from mirrorl.models import build_tiny, first_line, load_policy, load_tokenizer, pick_device, pick_dtype, save_policy
from mirrorl.rewards.batch import GuardedReward
from mirrorl.rewards.registry import answer_extractor, get_reward
from mirrorl.rollout.engine import Engine
from mirrorl.train.checkpoint import Checkpoint, CheckpointStore, find_latest
from mirrorl.train.dpo import PreferencePair, train_dpo
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
from mirrorl.types import Problem, SamplingParams

# Settings a resumed phase must keep: its saved data cursor, batch order or replay buffer depend on
# them. (The loops also compare a digest of the examples or problems, which catches a changed file.)
FIXED = {
    "sft": ("data.train_path", "data.prompt_field", "data.solution_field", "data.num_sft", "data.use_chat_template",
            "sft.batch_size", "sft.bucket_window", "sft.max_len"),
    "rl": ("data.train_path", "data.prompt_field", "data.answer_field", "data.num_rl", "algo.num_samples",
           "sampler.name"),
    "dpo": ("dpo.pairs_path", "dpo.num_problems", "dpo.num_samples", "dpo.longer_ratio", "dpo.max_pairs_per_problem",
            "dpo.batch_size", "dpo.bucket_window", "dpo.max_len", "data.use_chat_template"),
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
    unit = "iterations" if phase == "rl" else "steps"
    if resume.step > total:
        raise ValueError(f"cannot resume from {resume.path}: it is at step {resume.step}, past {phase}.{unit}={total}")
    console.print(f"{phase}: resuming from {resume.path} (step {resume.step} of {total})"
                  + (f"; changed since: {', '.join(changed)}" if changed else ""))
    if resume.step == total:
        console.print(f"{phase}: the checkpoint already completes all {total} {unit}; nothing to train")
    return resume


@contextmanager
def _training(cfg: Config, phase: str, start: Start, resume: Checkpoint | None, every: int,
              tokenizer: PreTrainedTokenizerBase) -> Iterator[tuple[Checkpointing, MetricsLogger]]:
    """After every input has loaded: clear an overwritten phase, record the config, open store and logger
    (closed on the way out)."""
    out = cfg.run.output_dir
    if start == "overwrite":
        clear_phase(out, phase)
    (out / "config.yaml").write_text(dump_config(cfg))
    store = CheckpointStore(checkpoint_root(out, phase), cfg.checkpoint.keep_last, cfg.checkpoint.keep_every)
    checkpointing = Checkpointing(store, tokenizer, cfg.model_dump(mode="json"), every, resume)
    logger = MetricsLogger(out, phase, cfg.run.tensorboard, cfg.run.wandb,
                           resume_step=None if resume is None else resume.step)
    try:
        yield checkpointing, logger
    finally:
        logger.close()


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
    with _training(cfg, "sft", start, resume, cfg.sft.save_every, tokenizer) as (checkpointing, logger):
        result = train_sft(model, examples, cfg.sft, tokenizer.pad_token_id, logger, cfg.run.seed, checkpointing)
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
        with _training(cfg, "rl", start, resume, cfg.rl.save_every, tokenizer) as (checkpointing, logger):
            result = train_rl(trainer, generator, reward, tokenizer, problems, cfg, logger, checkpointing)
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
        with _training(cfg, "rl", start, resume, cfg.rl.save_every, tokenizer) as (checkpointing, logger):
            result = train_rl(run.trainer, run.generator, reward or GuardedReward(run.reward), tokenizer, problems,
                              cfg, logger, checkpointing)
        run.trainer.export(cfg.run.output_dir / "rl" / "final")
    return result


def eval_params(cfg: Config) -> SamplingParams:
    """The evaluation protocol's sampling: `eval`'s temperature and length where set, else `rollout`'s."""
    changes = {"temperature": cfg.eval.temperature, "max_new_tokens": cfg.eval.max_new_tokens}
    return cfg.rollout.params(**{key: value for key, value in changes.items() if value is not None})


def _sample(cfg: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: list[Problem],
            reward: GuardedReward, num_samples: int, greedy: bool) -> EvalResult:
    """`num_samples` responses per problem under the evaluation protocol, scored, with their records."""
    generator = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return evaluate(generator, tokenizer, problems, reward, eval_params(cfg), num_samples, greedy,
                    cfg.data.use_chat_template, cfg.run.seed, ks=[k for k in cfg.eval.ks() if k <= num_samples],
                    extract=answer_extractor(cfg.rl.reward, cfg.rewards))


def run_eval(cfg: Config, checkpoint: str | Path, name: str) -> EvalResult:
    """Evaluate a policy on the held-out split and write `eval_<name>.json` and its samples,
    `eval_<name>_samples.jsonl`."""
    reward = GuardedReward(get_reward(cfg.rl.reward, cfg.rewards))
    out = prepare(cfg)
    model, tokenizer = open_policy(cfg, checkpoint)
    problems = load_split(cfg.data, "eval", cfg.run.seed)
    result = _sample(cfg, model, tokenizer, problems, reward, cfg.eval.num_samples, cfg.eval.greedy)
    (out / f"eval_{name}.json").write_text(json.dumps({"checkpoint": str(checkpoint), **result.as_dict()}, indent=2))
    write_jsonl(out / f"eval_{name}_samples.jsonl", result.records)
    greedy = "-" if result.greedy_accuracy is None else f"{result.greedy_accuracy:.3f}"
    pass_k = ", ".join(f"pass@{k} {value:.3f}" for k, value in result.pass_at_k.items() if k != "1")
    maj_k = ", ".join(f"maj@{k} {value:.3f}" for k, value in result.maj_at_k.items())
    console.print(f"eval {name}: pass@1 {result.pass1:.3f} (n={result.num_samples}), "
                  + "".join(f"{part}, " for part in (pass_k, maj_k) if part)
                  + f"greedy {greedy}, mean tokens {result.mean_tokens:.1f} on {result.num_problems} problems")
    if result.unscored:
        console.print(f"eval {name}: {result.unscored} responses unscored (the reward returned None or raised), "
                      f"left out of the accuracies" + (f"; first error: {result.first_reward_error}"
                                                       if result.first_reward_error else ""))
    return result


def long_policy(cfg: Config, option: str) -> str | Path:
    """The model long2short starts from: the config's `option` (e.g. 'dpo.init_from'), else the run's RL output,
    else its SFT output, else model.path."""
    section, name = option.split(".")
    out = cfg.run.output_dir
    given = getattr(getattr(cfg, section), name)
    found = given or next((str(p) for p in (out / "rl" / "final", out / "sft" / "final") if p.is_dir()), None)
    if found is None and cfg.model.path is None:
        raise ValueError(f"no model to start from: {out} holds no rl/final or sft/final; set {option} (or model.path)")
    return found or cfg.model.path


def run_shortest_rs(cfg: Config) -> Path:
    """Shortest rejection sampling (k1.5 sec. 2.4): `rejection.num_samples` responses per training problem from
    `rejection.model`; the shortest correct finished one of each becomes an SFT row (prompt, answer, solution,
    difficulty) in `shortest_rs.jsonl`; `shortest_rs_report.json` tells how many were kept. Returns the rows' path."""
    reward = GuardedReward(get_reward(cfg.rl.reward, cfg.rewards))
    policy = long_policy(cfg, "rejection.model")
    problems = load_split(cfg.data, "rl", cfg.run.seed)[: cfg.rejection.num_problems]
    model, tokenizer = open_policy(cfg, policy)
    out = prepare(cfg)
    began = time.perf_counter()
    result = _sample(cfg, model, tokenizer, problems, reward, cfg.rejection.num_samples, greedy=False)
    rows, chosen_tokens = [], []
    for problem, group in zip(problems, groups_of(result.records), strict=True):
        best = shortest_correct(group)
        if best is not None:
            rows.append({"id": problem.id, "prompt": problem.prompt, "answer": problem.answer,
                         "solution": group[best].text, "difficulty": problem.difficulty})
            chosen_tokens.append(group[best].tokens)
    if not rows:
        raise ValueError(f"shortest rejection sampling: no problem had a correct finished response among "
                         f"{cfg.rejection.num_samples} samples from {policy}")
    write_jsonl(out / "shortest_rs.jsonl", rows)
    report = {"model": str(policy), "num_problems": len(problems), "num_samples": cfg.rejection.num_samples,
              "num_kept": len(rows), "sampled_pass1": result.pass1, "sampled_mean_tokens": result.mean_tokens,
              "kept_mean_tokens": sum(chosen_tokens) / len(chosen_tokens),
              "seconds": time.perf_counter() - began}
    (out / "shortest_rs_report.json").write_text(json.dumps(report, indent=2))
    console.print(f"shortest-rs: kept {len(rows)} of {len(problems)} problems, {report['kept_mean_tokens']:.1f} tokens "
                  f"(samples: {result.mean_tokens:.1f}, pass@1 {result.pass1:.3f}) -> {out / 'shortest_rs.jsonl'}")
    return out / "shortest_rs.jsonl"


def _sample_pairs(cfg: Config, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  reward: GuardedReward) -> list[dict[str, str]]:
    """DPO pairs from the policy's own samples (`long2short.select`), with dpo_pairs_report.json."""
    problems = load_split(cfg.data, "rl", cfg.run.seed)[: cfg.dpo.num_problems]
    result = _sample(cfg, model, tokenizer, problems, reward, cfg.dpo.num_samples, greedy=False)
    rows = []
    for problem, group in zip(problems, groups_of(result.records), strict=True):
        for positive, negative in preference_pairs(group, cfg.dpo.longer_ratio, cfg.dpo.max_pairs_per_problem):
            rows.append({"prompt": problem.prompt, "chosen": group[positive].text, "rejected": group[negative].text,
                         "chosen_tokens": group[positive].tokens, "rejected_tokens": group[negative].tokens,
                         "rejected_correct": group[negative].correct})
    report = {"num_problems": len(problems), "num_samples": cfg.dpo.num_samples, "num_pairs": len(rows),
              "problems_with_pairs": len({row["prompt"] for row in rows}), "sampled_pass1": result.pass1,
              "sampled_mean_tokens": result.mean_tokens,
              "wrong_negatives": sum(not row["rejected_correct"] for row in rows)}
    (cfg.run.output_dir / "dpo_pairs_report.json").write_text(json.dumps(report, indent=2))
    console.print(f"dpo: {len(rows)} pairs from {report['problems_with_pairs']} of {len(problems)} problems "
                  f"({report['wrong_negatives']} with a wrong negative)")
    return rows


def _read_pairs(path: Path) -> list[dict[str, str]]:
    """{prompt, chosen, rejected} rows; ValueError naming the file and row."""
    if not path.exists():
        raise ValueError(f"DPO pairs file {path} does not exist")
    rows = []
    for number, row in read_rows(path):
        missing = [key for key in ("prompt", "chosen", "rejected") if not isinstance(row.get(key), str)]
        if missing:
            raise ValueError(f"{path}:{number}: a DPO pair needs text fields prompt, chosen and rejected "
                             f"({', '.join(missing)} missing)")
        rows.append(row)
    if not rows:
        raise ValueError(f"DPO pairs file {path} holds no pairs")
    return rows


def run_dpo(cfg: Config, start: Start = "new") -> Path:
    """DPO (k1.5 sec. 2.4) from `dpo.init_from` (also the frozen reference) on `dpo.pairs_path`, or on pairs
    sampled from that policy (written to dpo_pairs.jsonl, which a resumed run reads back); returns the policy."""
    sampled = cfg.run.output_dir / "dpo_pairs.jsonl"
    reward = GuardedReward(get_reward(cfg.rl.reward, cfg.rewards)) if cfg.dpo.pairs_path is None else None
    out = prepare(cfg)
    resume = _phase_start(cfg, "dpo", start, cfg.dpo.steps)
    given = cfg.dpo.pairs_path or (sampled if resume is not None else None)
    rows = _read_pairs(Path(given)) if given else []
    model, tokenizer = open_policy(cfg, long_policy(cfg, "dpo.init_from") if resume is None
                                   else resume.path / MODEL_DIR)
    if not given:
        rows = _sample_pairs(cfg, model, tokenizer, reward)
        if not rows:
            raise ValueError("dpo: the policy's samples gave no pair (no problem had a correct finished response "
                             "and a negative); sample more (dpo.num_samples, dpo.num_problems) or give dpo.pairs_path")
        write_jsonl(sampled, rows)
    pairs = [PreferencePair(encode_prompt(tokenizer, row["prompt"], cfg.data.use_chat_template),
                            encode_response(tokenizer, row["chosen"]), encode_response(tokenizer, row["rejected"]))
             for row in rows]
    with _training(cfg, "dpo", start, resume, cfg.dpo.save_every, tokenizer) as (checkpointing, logger):
        result = train_dpo(model, pairs, cfg.dpo, tokenizer.pad_token_id, logger, cfg.run.seed, checkpointing)
    save_policy(model, tokenizer, out / "dpo" / "final")
    console.print(f"dpo: {result.steps} steps on {result.num_pairs} pairs, final loss {result.final_loss:.3f}, "
                  f"reward accuracy {result.reward_accuracy:.2f} -> {out / 'dpo' / 'final'}")
    return out / "dpo" / "final"


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
