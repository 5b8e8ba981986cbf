"""The k1.5 RL loop: online policy mirror descent, one iteration after another (sec. 2.3.2).

Each iteration i reads top to bottom:
  1. sample   - the sampler picks the iteration's `problems_per_iteration` new problems (sec. 2.3.4);
  2. rollout  - the generator, holding weight version i, extends every unfinished trajectory (k per
                problem) by at most `segment_budget` tokens (partial rollouts, sec. 2.6.2; 0 means
                whole responses), the ones continued from the replay buffer first, a freed slot
                taking the next trajectory at once; the groups whose k members have all finished
                come out;
  3. reward   - the batch reward scores them through the guard; the k1.5 length reward is added
                (sec. 2.3.3), and the repeat penalty to responses stopped for looping;
  4. optimize - the samples become a `TrainBatch` (mini-batches of whole groups) and the trainer
                takes `grad_steps` optimizer steps on it (`mirrorl.train.trainer`: pi_i log-probs,
                off-policy weights of partial rollouts, the chosen loss). The optimizer is reset
                at the start of the iteration (configurable); the trainer's weights after the
                steps, theta_{i+1}, are published to the generator as version i + 1 when the next
                iteration begins;
  5. log      - the metrics, and every `rl.log_rollouts_every` iterations the samples themselves
                (`rollouts/{i}.jsonl`, `mirrorl.train.rollout_log`). The checkpoint of step i + 1
                (when due) is written as iteration i + 1 begins (step 0.).

The loop receives its generator, trainer and reward (`mirrorl.types`): the colocated engine and
the in-process trainer by default, another backend without a change here.

Asynchronous rollouts (`distributed.max_staleness=1`, rollout workers in other processes): once an
iteration's rewards are in, the sampler draws the next iteration's problems and their rollout
starts on the workers, still under pi_i, while the learners optimize; the next iteration waits for
it and trains on tokens one version old (`older`, weighted by the off-policy correction). An
iteration whose start is a checkpoint, or after a stop signal, runs synchronously, so checkpoints
hold no work in flight and resume stays exact; an asynchronous iteration that can score nothing
checkpoints the start of the next one (its own start had a rollout in flight).

A sample whose reward returned None or raised (the scorer failed) is dropped from its
group and counted, never scored 0; an iteration in which none could be scored stops the run after
a checkpoint. An iteration in which no group completes (possible with a small segment budget) only
rolls out.

Checkpoints (`checkpointing`, see `mirrorl.train.resume`): the one at step i is the state at the
start of iteration i - weights, AdamW state, RNG states (global and the loop's own generator), the
sampler (data cursor, success rates; the curriculum phase follows from i), the replay buffer of
partial rollouts with per-token policy versions, and the last training accuracy. Rollout seeds are
derived from (seed, iteration), so a resumed run repeats an uninterrupted one bit for bit on the
same hardware and thread count.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mirrorl.algo.length_penalty import length_penalty_weight, length_rewards
from mirrorl.algo.schedule import linear_warmup
from mirrorl.config import AlgoConfig, Config, SamplerConfig
from mirrorl.data.encode import encode_prompt
from mirrorl.data.samplers import CurriculumSampler, PrioritizedSampler, UniformSampler
from mirrorl.rewards.batch import GuardedReward
from mirrorl.rollout.partial import PartialRollouts, RolloutStep, Trajectory, rollout_metrics
from mirrorl.train.metrics import MetricsLogger, console, progress_bar
from mirrorl.train.resume import Checkpointing, TrainingStopped
from mirrorl.train.rollout_log import RolloutLog, rollout_records
from mirrorl.train.state import capture_rng, read_training_state, restore_rng
from mirrorl.train.trainer import build_train_batch
from mirrorl.types import Generator, Problem, Sample, Trainer

Sampler = UniformSampler | CurriculumSampler | PrioritizedSampler


@dataclass
class RLResult:
    iterations: int  # trained by this call (fewer than rl.iterations when resumed)
    final_accuracy: float  # training accuracy of the last iteration's samples


def build_sampler(cfg: SamplerConfig, problems: Sequence[Problem], seed: int) -> Sampler:
    """The configured problem sampler over `problems`."""
    if cfg.name == "uniform":
        return UniformSampler(num_problems=len(problems), seed=seed)
    if cfg.name == "prioritized":
        return PrioritizedSampler(
            num_problems=len(problems), seed=seed, initial_success=cfg.initial_success, ema=cfg.ema,
            min_weight=cfg.min_weight,
        )
    missing = [p.id for p in problems if p.difficulty is None]
    if missing:
        raise ValueError(f"sampler.name=curriculum needs a difficulty on every problem; {missing[0]!r} has none")
    return CurriculumSampler(
        difficulties=[p.difficulty for p in problems], switch_iteration=cfg.switch_iteration,
        hard_min_difficulty=cfg.hard_min_difficulty, first_phase=cfg.first_phase, seed=seed,
    )


def to_samples(groups: Sequence[Sequence[Trajectory]], tokenizer: PreTrainedTokenizerBase) -> list[Sample]:
    """Finished trajectories as Samples, with their decoded text."""
    return [
        Sample(problem_index=t.problem_index, prompt_ids=t.prompt_ids, response_ids=t.response_ids,
               finish_reason=t.finish_reason or "budget", group_id=t.group_id, versions=t.versions,
               logprobs=t.logprobs, text=tokenizer.decode(t.response_ids, skip_special_tokens=True))
        for group in groups for t in group
    ]


@dataclass
class Scored:
    samples: list[Sample]  # the ones the reward could score, their rewards filled in
    errors: list[str]  # what the reward raised, a line each


def score(samples: list[Sample], problems: Sequence[Problem], reward: GuardedReward,
          repeat_penalty: float = 0.0) -> Scored:
    """Fill correctness rewards (minus the repeat penalty) of the samples the reward could score."""
    scores = reward([s.text for s in samples], [problems[s.problem_index] for s in samples])
    kept = []
    for sample, value in zip(samples, scores.values):
        if value is None:
            continue
        sample.correct = value >= 1.0
        sample.reward = float(value) - (repeat_penalty if sample.finish_reason == "repeat" else 0.0)
        kept.append(sample)
    return Scored(kept, scores.errors)


def add_length_rewards(samples: list[Sample], cfg: AlgoConfig, iteration: int) -> float:
    """Set each sample's weighted k1.5 length reward; returns the weight in force."""
    weight = length_penalty_weight(iteration, cfg.length_penalty.weight, cfg.length_penalty.warmup_iterations)
    if weight > 0:
        bonus = length_rewards(
            torch.tensor([len(s.response_ids) for s in samples], dtype=torch.float),
            torch.tensor([s.correct for s in samples]),
            torch.tensor([s.group_id for s in samples]),
        )
        for sample, value in zip(samples, bonus.tolist()):
            sample.length_reward = weight * value
    return weight


def group_success(samples: list[Sample]) -> dict[int, tuple[int, float]]:
    """Per group with at least one scored sample: its problem index and fraction correct."""
    groups: dict[int, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.group_id, []).append(sample)
    return {gid: (members[0].problem_index, sum(s.correct for s in members) / len(members))
            for gid, members in sorted(groups.items())}


def iteration_metrics(samples: list[Sample], num_drawn: int, num_groups: int) -> dict[str, float]:
    """Reward, accuracy, length and finish-reason figures of one iteration's samples."""
    lengths = [len(s.response_ids) for s in samples]
    reasons = Counter(s.finish_reason for s in samples)
    success = [rate for _, rate in group_success(samples).values()]
    return {
        "reward": sum(s.reward + s.length_reward for s in samples) / len(samples),
        "accuracy": sum(s.correct for s in samples) / len(samples),
        "length_reward": sum(s.length_reward for s in samples) / len(samples),
        "response_tokens": sum(lengths) / len(lengths),
        "response_tokens_max": max(lengths),
        "dropped_samples": num_drawn - len(samples),
        "solved_none_fraction": sum(v == 0 for v in success) / num_groups,
        "solved_all_fraction": sum(v == 1 for v in success) / num_groups,
        **{f"finish_{reason}": count / len(samples) for reason, count in reasons.items()},
    }


def problems_digest(problems: Sequence[Problem]) -> str:
    """sha256 over the problems' ids, prompts and answers: a resumed run must draw from the same list."""
    digest = hashlib.sha256()
    for problem in problems:
        digest.update(json.dumps([problem.id, problem.prompt, problem.answer]).encode())
    return digest.hexdigest()


def loop_state(iteration: int, accuracy: float, sampler: Sampler, rollouts: PartialRollouts, rng: random.Random,
               digest: str) -> dict:
    """What a checkpoint at step `iteration` holds besides the weights and the optimizer, as fresh JSON-able copies.

    The weights and optimizer are saved from the live objects: an iteration changes them only in
    its optimize phase. The length-penalty weight, the LR warm-up and the curriculum phase are not
    stored: all three are functions of the iteration.
    """
    trainer = {"iteration": iteration, "accuracy": accuracy, "problems_sha256": digest,
               "sampler": sampler.state_dict(), "rollouts": rollouts.state_dict()}
    return {"trainer": json.loads(json.dumps(trainer)), "rng": capture_rng(loop=rng)}


def load_loop_state(path: Path, trainer: Trainer, sampler: Sampler, rollouts: PartialRollouts, rng: random.Random,
                    digest: str) -> dict[str, Any]:
    """Put the checkpoint at `path` into the loop's objects (the weights are loaded with the policy);
    returns its trainer state (`iteration` to continue from, last training `accuracy`, ...)."""
    saved = read_training_state(path)
    if saved.trainer["problems_sha256"] != digest:
        raise ValueError(f"cannot resume from {path}: the training problems differ from the ones it was trained on "
                         "(was the data file changed?)")
    trainer.load_optimizer(path)
    sampler.load_state_dict(saved.trainer["sampler"])
    rollouts.load_state_dict(saved.trainer["rollouts"])
    restore_rng(saved.rng, loop=rng)
    return saved.trainer


def _save_after(ckpt: Checkpointing, iteration: int, trainer: Trainer, accuracy: float, sampler: Sampler,
                rollouts: PartialRollouts, rng: random.Random, digest: str) -> Path | None:
    """The checkpoint an asynchronous iteration can write: the state at the start of the next one
    (its own start had a rollout in flight). Used when nothing of the iteration could be scored."""
    state = loop_state(iteration + 1, accuracy, sampler, rollouts, rng, digest)
    return ckpt.save_with(iteration + 1, trainer.save, **state)


def train_rl(trainer: Trainer, generator: Generator, reward: GuardedReward, tokenizer: PreTrainedTokenizerBase,
             problems: Sequence[Problem], cfg: Config, logger: MetricsLogger,
             checkpointing: Checkpointing | None = None) -> RLResult:
    """Run the k1.5 loop on `problems` up to iteration `cfg.rl.iterations` (from `checkpointing.resume` if set)."""
    ckpt = checkpointing or Checkpointing.off()
    sampler = build_sampler(cfg.sampler, problems, cfg.run.seed)
    rng = random.Random(cfg.run.seed)
    rollouts = PartialRollouts(cfg.algo.num_samples, cfg.rl.segment_budget)
    params = cfg.rollout.params()
    first, accuracy, digest = 0, 0.0, problems_digest(problems)
    if ckpt.resume is not None:
        saved = load_loop_state(ckpt.resume.path, trainer, sampler, rollouts, rng, digest)
        first, accuracy = saved["iteration"], saved["accuracy"]
    asynchronous = cfg.run.backend == "ray" and cfg.distributed.max_staleness > 0
    rollout_log = RolloutLog(logger.path.parent, first, cfg.rl.log_rollouts_every)
    prefetched: Callable[[], RolloutStep] | None = None  # this iteration's rollout, run during the last optimize

    def draw(i: int) -> None:  # 1. sample: iteration i's new problems join the buffer, k trajectories each
        for index in sampler.sample(cfg.rl.problems_per_iteration, i):
            rollouts.add(index, encode_prompt(tokenizer, problems[index].prompt, cfg.data.use_chat_template))

    with ckpt.signals(), progress_bar() as bar:
        task = bar.add_task("rl", total=cfg.rl.iterations, completed=first, info="")
        for iteration in range(first, cfg.rl.iterations):
            if prefetched is None:
                state = loop_state(iteration, accuracy, sampler, rollouts, rng, digest)  # the start of this iteration
                save = partial(ckpt.save_with, iteration, trainer.save, **state)
                ckpt.boundary(iteration, first, "rl", save)  # 0. checkpoint when due, or stop when asked to
                began = time.perf_counter()
                generator.update_weights(iteration, trainer.state_dict())  # pi_i generates this iteration
                t0 = time.perf_counter()
                draw(iteration)
                step = rollouts.step(generator, params, seed=cfg.run.seed * 100_003 + iteration)  # 2.
                t1 = time.perf_counter()
                times = {"time_sync": t0 - began, "time_rollout": t1 - t0,
                         "rollout_tokens_per_second": step.new_tokens / (t1 - t0)}
            else:  # asynchronous: 1. and 2. ran under pi_{i-1} while the learners made pi_i; wait for them
                save = partial(_save_after, ckpt, iteration, trainer, accuracy, sampler, rollouts, rng, digest)
                began = time.perf_counter()
                step, prefetched = prefetched(), None
                t0 = time.perf_counter()
                generator.update_weights(iteration, trainer.state_dict())  # pi_i generates the next prefetch
                t1 = time.perf_counter()
                times = {"time_sync": t1 - t0, "time_rollout": t0 - began}  # the wait: the rest overlapped
            metrics = rollout_metrics(step, rollouts, iteration)
            metrics.update(times)
            drawn = to_samples(step.groups, tokenizer)
            scored = score(drawn, problems, reward, cfg.rollout.repeat.penalty)  # 3. reward
            samples, errors = scored.samples, scored.errors
            metrics["reward_errors"] = len(errors)
            if errors:
                console.print(f"rl iteration {iteration}: the reward function raised on {len(errors)} of "
                              f"{len(drawn)} samples, dropped them (first: {errors[0]})")
            if drawn and not samples:  # nothing to learn from: stop, resumable once the reward is fixed
                path = save()
                cause = f"{len(errors)} raised, first: {errors[0]}" if errors else "it returned None for all"
                raise TrainingStopped(f"rl iteration {iteration}: the reward function scored none of {len(drawn)} "
                                      f"samples ({cause}); checkpoint saved in {path}", path, 1)
            if samples:
                weight = add_length_rewards(samples, cfg.algo, iteration)
                success = group_success(samples)
                sampler.update([index for index, _ in success.values()], [rate for _, rate in success.values()])
            if asynchronous and iteration + 1 < cfg.rl.iterations and ckpt.quiet(iteration + 1):
                draw(iteration + 1)  # the next rollout runs on the workers during this optimize
                prefetched = rollouts.submit(generator, params, seed=cfg.run.seed * 100_003 + iteration + 1)
            if samples:
                t2 = time.perf_counter()
                if cfg.rl.reset_optimizer:  # 4. optimize
                    trainer.reset_optimizer()
                batch = build_train_batch(samples, iteration, tokenizer.pad_token_id, cfg.rl.grad_steps, rng,
                                          cfg.rl.train_tokens)
                lr = cfg.rl.lr * linear_warmup(iteration, cfg.rl.lr_warmup_iterations)
                step_metrics = trainer.train_step(batch, lr)
                t3 = time.perf_counter()
                metrics.update(iteration_metrics(samples, len(drawn), len(step.groups)), **step_metrics.as_dict(),
                               length_penalty_weight=weight, time_reward=t2 - t1, time_optimize=t3 - t2)
                accuracy = metrics["accuracy"]
            if rollout_log.due(iteration):  # (empty when no group finished)
                rollout_log.write(iteration, rollout_records(
                    samples, problems, tokenizer, iteration, cfg.rollout.repeat.penalty,
                    step_metrics.sample_weights if samples else {}, cfg.rl.log_rollout_groups, cfg.rl.log_logprobs))
            metrics["time_iteration"] = time.perf_counter() - began  # 5. log
            logger.log(iteration, metrics)
            bar.update(task, advance=1, info=f"acc {accuracy:.2f} len {metrics.get('response_tokens', 0):.0f} "
                                             f"kl {metrics.get('kl', 0):.4f} buffer {metrics['buffer_trajectories']}")
        if first < cfg.rl.iterations:
            final = loop_state(cfg.rl.iterations, accuracy, sampler, rollouts, rng, digest)
            ckpt.save_with(cfg.rl.iterations, trainer.save, **final)
    return RLResult(cfg.rl.iterations - first, accuracy)
