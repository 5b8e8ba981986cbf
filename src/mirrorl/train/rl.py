"""The k1.5 RL loop: online policy mirror descent, one iteration after another (sec. 2.3.2).

Each iteration i reads top to bottom:
  1. sample   - the sampler picks the iteration's new problems (sec. 2.3.4), as many as the
                slots left by trajectories continued from the replay buffer allow;
  2. rollout  - the engine extends every unfinished trajectory (k per problem) under the current
                policy pi_i by at most `segment_budget` tokens (partial rollouts, sec. 4; 0 means
                whole responses); the groups whose k members have all finished come out;
  3. reward   - the verifier scores them; the k1.5 length reward is added (sec. 2.3.3), and the
                repeat penalty to responses stopped for looping;
  4. optimize - log pi_i is computed once for whole trajectories (theta == theta_i before the
                first step; tokens written by earlier policies train unless `train_tokens` is
                "newest"), then
                `grad_steps` optimizer steps on mini-batches of whole groups minimise the chosen
                loss; every step after the first is off-policy, as in the report. The optimizer
                is reset at the start of the iteration (configurable), and theta_{i+1} becomes
                the next iteration's pi_i simply by being the weights that generate next;
  5. log and checkpoint.

A sample whose reward function returned None (the scorer failed) is dropped from its group and
counted, never scored 0. An iteration in which no group completes (possible with a small segment
budget) only rolls out. Not covered yet: exact resume (the checkpoint issue).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mirrorl.algo.length_penalty import length_penalty_weight, length_rewards
from mirrorl.algo.logprobs import sequence_logprobs
from mirrorl.algo.losses import LOSSES, LossInputs, LossParams
from mirrorl.config import AlgoConfig, Config, SamplerConfig
from mirrorl.data.encode import PaddedBatch, encode_prompt, pad_batch
from mirrorl.data.samplers import CurriculumSampler, PrioritizedSampler, UniformSampler
from mirrorl.models import save_policy
from mirrorl.rewards.registry import RewardFn, get_reward
from mirrorl.rollout.engine import Engine
from mirrorl.rollout.partial import PartialRollouts, Trajectory, rollout_metrics
from mirrorl.train.metrics import MetricsLogger, progress_bar
from mirrorl.types import Problem, Sample


@dataclass
class RLResult:
    iterations: int
    final_accuracy: float  # training accuracy of the last iteration's samples


def build_sampler(cfg: SamplerConfig, problems: Sequence[Problem], seed: int):
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
               text=tokenizer.decode(t.response_ids, skip_special_tokens=True))
        for group in groups for t in group
    ]


def score(samples: list[Sample], problems: Sequence[Problem], reward_fn: RewardFn,
          repeat_penalty: float = 0.0) -> list[Sample]:
    """Fill correctness rewards (minus the repeat penalty); return only the samples that could be scored."""
    kept = []
    for sample in samples:
        value = reward_fn(sample.text, problems[sample.problem_index])
        if value is None:
            continue
        sample.correct = value >= 1.0
        sample.reward = float(value) - (repeat_penalty if sample.finish_reason == "repeat" else 0.0)
        kept.append(sample)
    return kept


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


def _select(batch: PaddedBatch, rows: torch.Tensor) -> PaddedBatch:
    """Rows of a padded batch, trimmed to their longest sequence."""
    width = int(batch.attention_mask[rows].sum(dim=1).max().item())
    return PaddedBatch(
        batch.input_ids[rows, :width], batch.attention_mask[rows, :width], batch.response_mask[rows, : width - 1]
    )


@torch.no_grad()
def reference_logprobs(model: PreTrainedModel, batch: PaddedBatch, chunk_size: int, micro: int = 64):
    """log pi_i of every token and the policy's mean entropy over response tokens."""
    logprobs, entropy_sum = [], 0.0
    for start in range(0, batch.input_ids.shape[0], micro):
        rows = torch.arange(start, min(start + micro, batch.input_ids.shape[0]))
        sub = _select(batch, rows)
        out = sequence_logprobs(model, sub.input_ids, sub.attention_mask, chunk_size, with_entropy=True)
        full = torch.zeros(len(rows), batch.input_ids.shape[1] - 1, device=batch.input_ids.device)
        full[:, : out.logprobs.shape[1]] = out.logprobs
        logprobs.append(full)
        entropy_sum += float((out.entropy * sub.response_mask).sum())
    return torch.cat(logprobs), entropy_sum / max(1.0, float(batch.response_mask.sum()))


def optimize(model: PreTrainedModel, optimizer: torch.optim.Optimizer, samples: list[Sample], cfg: Config,
             pad_id: int, rng: random.Random, iteration: int) -> dict[str, float]:
    """`grad_steps` optimizer steps on mini-batches of whole groups; returns averaged loss metrics."""
    device = next(model.parameters()).device
    batch = pad_batch([s.prompt_ids for s in samples], [s.response_ids for s in samples], pad_id, device)
    if cfg.rl.train_tokens == "newest":  # tokens from earlier policies give context but no gradient
        for row, sample in enumerate(samples):
            old = [len(sample.prompt_ids) - 1 + j for j, v in enumerate(sample.versions) if v != iteration]
            batch.response_mask[row, old] = 0.0
    ref, entropy = reference_logprobs(model, batch, cfg.rl.logprob_chunk_size)  # [N, T-1]
    rewards = torch.tensor([s.reward + s.length_reward for s in samples], device=device)  # [N]
    correct = torch.tensor([s.correct for s in samples], device=device)  # [N]
    group_ids = torch.tensor([s.group_id for s in samples], device=device)  # [N]
    params = LossParams(tau=cfg.algo.tau, length_normalize=cfg.algo.length_normalize,
                        clip_eps=cfg.algo.clip_eps, scale_by_std=cfg.algo.scale_by_std)
    groups = sorted(set(group_ids.tolist()))
    rng.shuffle(groups)
    num_steps = min(cfg.rl.grad_steps, len(groups))
    totals: Counter[str] = Counter()
    model.train()
    for step in range(num_steps):
        chosen = torch.tensor(groups[step::num_steps], device=device)
        rows = torch.nonzero(torch.isin(group_ids, chosen)).squeeze(1)
        sub = _select(batch, rows)
        width = sub.response_mask.shape[1]
        logprobs = sequence_logprobs(model, sub.input_ids, sub.attention_mask, cfg.rl.logprob_chunk_size).logprobs
        out = LOSSES[cfg.algo.loss](
            LossInputs(logprobs=logprobs, ref_logprobs=ref[rows, :width], mask=sub.response_mask,
                       rewards=rewards[rows], correct=correct[rows], group_ids=group_ids[rows]),
            params,
        )
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.rl.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        totals.update({**out.metrics, "grad_norm": float(grad_norm)})
    model.eval()
    return {**{k: v / num_steps for k, v in totals.items()}, "entropy": entropy}


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


def train_rl(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: Sequence[Problem],
             cfg: Config, logger: MetricsLogger, checkpoint_dir: Path) -> RLResult:
    """Run `cfg.rl.iterations` iterations of the k1.5 loop on `problems`."""
    sampler = build_sampler(cfg.sampler, problems, cfg.run.seed)
    reward_fn = get_reward(cfg.rl.reward)
    rng = random.Random(cfg.run.seed)
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    rollouts = PartialRollouts(cfg.algo.num_samples, cfg.rl.segment_budget)
    make_optimizer = lambda: torch.optim.AdamW(model.parameters(), lr=cfg.rl.lr, betas=(0.9, 0.95), weight_decay=0.0)  # noqa: E731
    optimizer = make_optimizer()
    accuracy = 0.0
    with progress_bar() as bar:
        task = bar.add_task("rl", total=cfg.rl.iterations, info="")
        for iteration in range(cfg.rl.iterations):
            t0 = time.perf_counter()
            for index in sampler.sample(rollouts.new_group_quota(cfg.rl.problems_per_iteration), iteration):  # 1.
                rollouts.add(index, encode_prompt(tokenizer, problems[index].prompt, cfg.data.use_chat_template))
            stepped = len(rollouts.unfinished())
            ready = rollouts.step(engine, cfg.rollout, seed=cfg.run.seed * 100_003 + iteration, version=iteration)  # 2.
            t1 = time.perf_counter()
            metrics = rollout_metrics(ready, rollouts, iteration, engine.idle_fraction, stepped)
            metrics.update(rollout_tokens_per_second=engine.new_tokens / (t1 - t0), time_rollout=t1 - t0)
            drawn = to_samples(ready, tokenizer)
            samples = score(drawn, problems, reward_fn, cfg.rollout.repeat.penalty)  # 3. reward
            if drawn and not samples:
                raise RuntimeError(f"iteration {iteration}: the reward function scored none of {len(drawn)} samples")
            if samples:
                weight = add_length_rewards(samples, cfg.algo, iteration)
                t2 = time.perf_counter()
                if cfg.rl.reset_optimizer:  # 4. optimize
                    optimizer = make_optimizer()
                for group in optimizer.param_groups:
                    group["lr"] = cfg.rl.lr * min(1.0, (iteration + 1) / max(1, cfg.rl.lr_warmup_iterations))
                loss_metrics = optimize(model, optimizer, samples, cfg, tokenizer.pad_token_id, rng, iteration)
                t3 = time.perf_counter()
                scored = group_success(samples)  # 5. log and checkpoint
                sampler.update([index for index, _ in scored.values()], [rate for _, rate in scored.values()])
                metrics.update(iteration_metrics(samples, len(drawn), len(ready)), **loss_metrics,
                               length_penalty_weight=weight, time_reward=t2 - t1, time_optimize=t3 - t2)
                accuracy = metrics["accuracy"]
            metrics["time_iteration"] = time.perf_counter() - t0
            logger.log(iteration, metrics)
            bar.update(task, advance=1, info=f"acc {accuracy:.2f} len {metrics.get('response_tokens', 0):.0f} "
                                             f"kl {metrics.get('kl', 0):.4f} buffer {metrics['buffer_trajectories']}")
            if cfg.rl.save_every and (iteration + 1) % cfg.rl.save_every == 0:
                save_policy(model, tokenizer, checkpoint_dir / f"iteration-{iteration + 1}")
    return RLResult(cfg.rl.iterations, accuracy)
