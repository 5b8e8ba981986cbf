"""The k1.5 RL loop: online policy mirror descent, one iteration after another (sec. 2.3.2).

Each iteration i reads top to bottom:
  1. sample   - the sampler picks the iteration's `problems_per_iteration` new problems (sec. 2.3.4);
  2. rollout  - the engine extends every unfinished trajectory (k per problem) under the current
                policy pi_i by at most `segment_budget` tokens (partial rollouts, sec. 4; 0 means
                whole responses), the ones continued from the replay buffer first, a freed slot
                taking the next trajectory at once; the groups whose k members have all finished
                come out;
  3. reward   - the verifier scores them; the k1.5 length reward is added (sec. 2.3.3), and the
                repeat penalty to responses stopped for looping;
  4. optimize - log pi_i of whole trajectories: the engine's log-probs when pi_i sampled every
                token, else one forward pass (theta == theta_i before the first step); tokens
                written by earlier policies train unless `train_tokens` is "newest", their
                sample weighted by the truncated importance ratio pi_i / mu of those tokens
                (`off_policy_correction`, our addition: the report is silent); then
                `grad_steps` optimizer steps on mini-batches of whole groups minimise the chosen
                loss; every step after the first is off-policy, as in the report. The optimizer
                is reset at the start of the iteration (configurable), and theta_{i+1} becomes
                the next iteration's pi_i simply by being the weights that generate next;
  5. log. The checkpoint of step i + 1 (when due) is written as iteration i + 1 begins (step 0.).

A sample whose reward function returned None or raised (the scorer failed) is dropped from its
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mirrorl.algo.length_penalty import length_penalty_weight, length_rewards
from mirrorl.algo.logprobs import sequence_logprobs
from mirrorl.algo.losses import LOSSES, LossInputs, LossParams, stale_weights
from mirrorl.config import AlgoConfig, Config, SamplerConfig
from mirrorl.data.encode import PaddedBatch, encode_prompt, pad_batch
from mirrorl.data.samplers import CurriculumSampler, PrioritizedSampler, UniformSampler
from mirrorl.rewards.registry import RewardFn, get_reward
from mirrorl.rollout.engine import Engine
from mirrorl.rollout.partial import PartialRollouts, Trajectory, rollout_metrics
from mirrorl.train.checkpoint import capture_rng, read_training_state, restore_rng
from mirrorl.train.metrics import MetricsLogger, console, progress_bar
from mirrorl.train.resume import Checkpointing, TrainingStopped
from mirrorl.types import Problem, Sample


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


def score(samples: list[Sample], problems: Sequence[Problem], reward_fn: RewardFn,
          repeat_penalty: float = 0.0) -> list[Sample]:
    """Fill correctness rewards (minus the repeat penalty); return only the samples that could be scored."""
    items = [(sample.text, problems[sample.problem_index]) for sample in samples]
    score_batch = getattr(reward_fn, "score_batch", None)  # a reward model judges the whole batch in one call
    values = score_batch(items) if score_batch is not None else [reward_fn(*item) for item in items]
    kept = []
    for sample, value in zip(samples, values):
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
def reference_logprobs(model: PreTrainedModel, batch: PaddedBatch, samples: Sequence[Sample], iteration: int,
                       chunk_size: int, micro: int = 64) -> torch.Tensor:
    """log pi_i [N, T-1] of every token of whole trajectories.

    When every token was sampled by pi_i itself (full rollouts, or a trajectory finished within one
    segment) these are the log-probs the engine returned with the tokens, computed from the same
    weights; otherwise (tokens from earlier policies) one forward pass recomputes them.
    """
    if all(v == iteration for s in samples for v in s.versions) and all(len(s.logprobs) == len(s.response_ids)
                                                                         for s in samples):
        return per_token(batch, samples, [s.logprobs for s in samples])
    ref = torch.zeros_like(batch.response_mask)  # [N, T-1]
    for start in range(0, batch.input_ids.shape[0], micro):
        rows = torch.arange(start, min(start + micro, batch.input_ids.shape[0]))
        sub = _select(batch, rows)
        out = sequence_logprobs(model, sub.input_ids, sub.attention_mask, chunk_size)
        ref[rows, : out.logprobs.shape[1]] = out.logprobs
    return ref


def per_token(batch: PaddedBatch, samples: Sequence[Sample], values: Sequence[Sequence[float]]) -> torch.Tensor:
    """Each sample's per-response-token `values` under its tokens [N, T-1] (position t predicts token t+1)."""
    out = torch.zeros_like(batch.response_mask)  # [N, T-1]
    for row, (sample, row_values) in enumerate(zip(samples, values)):
        start = len(sample.prompt_ids) - 1
        out[row, start : start + len(row_values)] = torch.tensor(row_values, dtype=out.dtype)
    return out


def older_tokens(batch: PaddedBatch, samples: Sequence[Sample], iteration: int) -> torch.Tensor:
    """1.0 [N, T-1] under the response tokens earlier policies wrote (partial rollouts), else 0."""
    return per_token(batch, samples, [[float(v != iteration) for v in s.versions] for s in samples])


def optimize(model: PreTrainedModel, optimizer: torch.optim.Optimizer, samples: list[Sample], cfg: Config,
             pad_id: int, rng: random.Random, iteration: int) -> dict[str, float]:
    """`grad_steps` optimizer steps on mini-batches of whole groups; returns averaged loss metrics."""
    device = next(model.parameters()).device
    batch = pad_batch([s.prompt_ids for s in samples], [s.response_ids for s in samples], pad_id, device)
    older = older_tokens(batch, samples, iteration)  # [N, T-1]
    if cfg.rl.train_tokens == "newest":  # tokens of earlier policies stay as context only
        batch.response_mask *= 1 - older
    ref = reference_logprobs(model, batch, samples, iteration, cfg.rl.logprob_chunk_size)  # [N, T-1]
    weights = None  # off-policy correction of partial rollouts' older segments
    if cfg.rl.off_policy_correction == "truncated_is" and older.any():
        behaviour = per_token(batch, samples, [s.logprobs for s in samples])  # [N, T-1]
        weights = stale_weights(ref, behaviour, older, cap=cfg.rl.is_cap)  # [N]
    rewards = torch.tensor([s.reward + s.length_reward for s in samples], device=device)  # [N]
    correct = torch.tensor([s.correct for s in samples], device=device)  # [N]
    group_ids = torch.tensor([s.group_id for s in samples], device=device)  # [N]
    params = LossParams(tau=cfg.algo.tau, length_normalize=cfg.algo.length_normalize,
                        clip_eps=cfg.algo.clip_eps, scale_by_std=cfg.algo.scale_by_std)
    groups = sorted(set(group_ids.tolist()))
    rng.shuffle(groups)
    num_steps = min(cfg.rl.grad_steps, len(groups))
    totals: Counter[str] = Counter()
    entropy_sum = 0.0
    model.train()
    for step in range(num_steps):
        chosen = torch.tensor(groups[step::num_steps], device=device)
        rows = torch.nonzero(torch.isin(group_ids, chosen)).squeeze(1)
        sub = _select(batch, rows)
        width = sub.response_mask.shape[1]
        current = sequence_logprobs(model, sub.input_ids, sub.attention_mask, cfg.rl.logprob_chunk_size,
                                    with_entropy=True)
        logprobs = current.logprobs
        entropy_sum += float((current.entropy * sub.response_mask).sum())
        out = LOSSES[cfg.algo.loss](
            LossInputs(logprobs=logprobs, ref_logprobs=ref[rows, :width], mask=sub.response_mask,
                       rewards=rewards[rows], correct=correct[rows], group_ids=group_ids[rows],
                       weights=None if weights is None else weights[rows]),
            params,
        )
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.rl.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        totals.update({**out.metrics, "grad_norm": float(grad_norm)})
    model.eval()
    entropy = entropy_sum / max(1.0, float(batch.response_mask.sum()))  # of the policy as it was being updated
    metrics = {**{k: v / num_steps for k, v in totals.items()}, "entropy": entropy}
    if weights is not None:
        metrics["stale_weight_mean"] = float(weights.mean())
    return metrics


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


class GuardedReward:
    """The reward function with its exceptions caught: such a sample is dropped like a None reward.

    A scorer that raises on some input must not cost the run; the errors of an iteration are
    counted (`reward_errors`) and the first is shown. When no sample of an iteration could be
    scored the loop stops (after a checkpoint), since training on nothing would hide a broken reward.
    """

    def __init__(self, reward_fn: RewardFn) -> None:
        self.reward_fn = reward_fn
        self.errors: list[str] = []

    def __call__(self, response: str, problem: Problem) -> float | None:
        try:
            return self.reward_fn(response, problem)
        except Exception as err:  # noqa: BLE001 - any failure of user code drops the sample, counted
            self.errors.append(f"{type(err).__name__}: {err}".splitlines()[0])
            return None

    def score_batch(self, items: Sequence[tuple[str, Problem]]) -> list[float | None]:
        """The reward's own batch call when it has one (reward models), else one call per item."""
        batch = getattr(self.reward_fn, "score_batch", None)
        if batch is None:
            return [self(*item) for item in items]
        try:
            return list(batch(items))
        except Exception as err:  # noqa: BLE001 - as in __call__, for every item of the batch
            self.errors += [f"{type(err).__name__}: {err}".splitlines()[0]] * len(items)
            return [None] * len(items)

    def take_errors(self) -> list[str]:
        errors, self.errors = self.errors, []
        return errors


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


def load_loop_state(path: Path, optimizer: torch.optim.Optimizer, sampler: Sampler, rollouts: PartialRollouts,
                    rng: random.Random, digest: str) -> dict[str, Any]:
    """Put the checkpoint at `path` into the loop's objects (the weights are loaded with the model);
    returns its trainer state (`iteration` to continue from, last training `accuracy`, ...)."""
    saved = read_training_state(path, optimizer)
    if saved.trainer["problems_sha256"] != digest:
        raise ValueError(f"cannot resume from {path}: the training problems differ from the ones it was trained on "
                         "(was the data file changed?)")
    sampler.load_state_dict(saved.trainer["sampler"])
    rollouts.load_state_dict(saved.trainer["rollouts"])
    restore_rng(saved.rng, loop=rng)
    return saved.trainer


def train_rl(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: Sequence[Problem],
             cfg: Config, logger: MetricsLogger, checkpointing: Checkpointing | None = None) -> RLResult:
    """Run the k1.5 loop on `problems` up to iteration `cfg.rl.iterations` (from `checkpointing.resume` if set)."""
    ckpt = checkpointing or Checkpointing.off()
    sampler = build_sampler(cfg.sampler, problems, cfg.run.seed)
    reward_fn = GuardedReward(get_reward(cfg.rl.reward, cfg.rewards))
    rng = random.Random(cfg.run.seed)
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    rollouts = PartialRollouts(cfg.algo.num_samples, cfg.rl.segment_budget)
    make_optimizer = lambda: torch.optim.AdamW(model.parameters(), lr=cfg.rl.lr, betas=(0.9, 0.95), weight_decay=0.0)  # noqa: E731
    optimizer = make_optimizer()
    first, accuracy, digest = 0, 0.0, problems_digest(problems)
    if ckpt.resume is not None:
        trainer = load_loop_state(ckpt.resume.path, optimizer, sampler, rollouts, rng, digest)
        first, accuracy = trainer["iteration"], trainer["accuracy"]
    with ckpt.signals(), progress_bar() as bar:
        task = bar.add_task("rl", total=cfg.rl.iterations, completed=first, info="")
        for iteration in range(first, cfg.rl.iterations):
            state = loop_state(iteration, accuracy, sampler, rollouts, rng, digest)  # the start of this iteration
            save = lambda: ckpt.save(iteration, model, optimizer, **state)  # noqa: E731
            ckpt.boundary(iteration, first, "rl", save)  # 0. checkpoint when due, or stop when asked to
            t0 = time.perf_counter()
            for index in sampler.sample(cfg.rl.problems_per_iteration, iteration):  # 1.
                rollouts.add(index, encode_prompt(tokenizer, problems[index].prompt, cfg.data.use_chat_template))
            stepped = len(rollouts.unfinished())
            ready = rollouts.step(engine, cfg.rollout, seed=cfg.run.seed * 100_003 + iteration, version=iteration)  # 2.
            t1 = time.perf_counter()
            metrics = rollout_metrics(ready, rollouts, iteration, engine.idle_fraction, stepped)
            metrics.update(rollout_tokens_per_second=engine.new_tokens / (t1 - t0), time_rollout=t1 - t0)
            drawn = to_samples(ready, tokenizer)
            samples = score(drawn, problems, reward_fn, cfg.rollout.repeat.penalty)  # 3. reward
            errors = reward_fn.take_errors()
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
                t2 = time.perf_counter()
                if cfg.rl.reset_optimizer:  # 4. optimize
                    optimizer = make_optimizer()
                for group in optimizer.param_groups:
                    group["lr"] = cfg.rl.lr * min(1.0, (iteration + 1) / max(1, cfg.rl.lr_warmup_iterations))
                loss_metrics = optimize(model, optimizer, samples, cfg, tokenizer.pad_token_id, rng, iteration)
                t3 = time.perf_counter()
                scored = group_success(samples)  # 5. log
                sampler.update([index for index, _ in scored.values()], [rate for _, rate in scored.values()])
                metrics.update(iteration_metrics(samples, len(drawn), len(ready)), **loss_metrics,
                               length_penalty_weight=weight, time_reward=t2 - t1, time_optimize=t3 - t2)
                accuracy = metrics["accuracy"]
            metrics["time_iteration"] = time.perf_counter() - t0
            logger.log(iteration, metrics)
            bar.update(task, advance=1, info=f"acc {accuracy:.2f} len {metrics.get('response_tokens', 0):.0f} "
                                             f"kl {metrics.get('kl', 0):.4f} buffer {metrics['buffer_trajectories']}")
        if first < cfg.rl.iterations:
            final = loop_state(cfg.rl.iterations, accuracy, sampler, rollouts, rng, digest)
            ckpt.save(cfg.rl.iterations, model, optimizer, **final)
    return RLResult(cfg.rl.iterations - first, accuracy)
