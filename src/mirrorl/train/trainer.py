"""The optimize phase of k1.5 online policy mirror descent (sec. 2.3.2): the batch, and the trainer.

`build_train_batch` turns one iteration's scored samples into a `TrainBatch` (padded tensors, the
tokens that train, the behaviour log-probs, the mini-batches of whole groups); it runs where the
samples are, so another trainer (a learner group on other devices) receives the same batch.
`LocalTrainer` is the in-process `mirrorl.types.Trainer`: the policy and its AdamW in this process,
the same weights the colocated engine generates with.

One `train_step` is one iteration's optimize phase:
  - log pi_i of whole trajectories: the behaviour log-probs the generator returned when pi_i
    sampled every token, else one forward pass (theta == theta_i before the first step);
  - the off-policy weights of partial rollouts (our addition: the report is silent): a sample with
    tokens from earlier policies mu is weighted by min(is_cap, pi_i / mu) over those tokens;
  - an optimizer step per mini-batch; every step after the first is off-policy, as in the report.

Legend: N samples, T tokens of the longest prompt + response, G groups.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mirrorl.algo.logprobs import sequence_logprobs
from mirrorl.algo.losses import LOSSES, LossInputs, LossOutput, stale_weights
from mirrorl.data.encode import pad_batch
from mirrorl.models import save_policy
from mirrorl.train.resume import MODEL_DIR
from mirrorl.train.state import read_optimizer_state, write_optimizer_state
from mirrorl.types import Sample, StepMetrics, TrainBatch


def per_token(prompt_lengths: Sequence[int], values: Sequence[Sequence[float]], like: Tensor) -> Tensor:
    """Each sample's per-response-token `values` under its tokens, shaped like `like` [N, T-1]
    (position t predicts token t+1, so a response starts at its prompt length - 1)."""
    out = torch.zeros_like(like)  # [N, T-1]
    for row, (length, row_values) in enumerate(zip(prompt_lengths, values)):
        out[row, length - 1 : length - 1 + len(row_values)] = torch.tensor(row_values, dtype=out.dtype)
    return out


def minibatches(group_ids: Sequence[int], grad_steps: int, rng: random.Random) -> list[Tensor]:
    """Rows of each optimizer step: the groups shuffled by `rng` and dealt round-robin into at most
    `grad_steps` mini-batches, so each step sees whole groups (the baseline is per group)."""
    groups = sorted(set(group_ids))
    rng.shuffle(groups)
    num_steps = min(grad_steps, len(groups))
    ids = torch.tensor(list(group_ids))  # [N]
    return [torch.nonzero(torch.isin(ids, torch.tensor(groups[step::num_steps]))).squeeze(1)
            for step in range(num_steps)]


def build_train_batch(samples: Sequence[Sample], iteration: int, pad_id: int, grad_steps: int, rng: random.Random,
                      train_tokens: Literal["all", "newest"] = "all") -> TrainBatch:
    """The `TrainBatch` of one iteration's scored samples (on the CPU; the trainer moves it).

    Tokens sampled by earlier policies than pi_i (`iteration`) train unless `train_tokens` is
    "newest", where they only give context.
    """
    assert all(len(s.logprobs) == len(s.response_ids) == len(s.versions) for s in samples)
    padded = pad_batch([s.prompt_ids for s in samples], [s.response_ids for s in samples], pad_id, torch.device("cpu"))
    prompt_lengths = [len(s.prompt_ids) for s in samples]
    mask = padded.response_mask  # [N, T-1]
    older = per_token(prompt_lengths, [[float(v != iteration) for v in s.versions] for s in samples], mask)
    return TrainBatch(
        input_ids=padded.input_ids,
        attention_mask=padded.attention_mask,
        loss_mask=mask * (1 - older) if train_tokens == "newest" else mask,
        behaviour_logprobs=per_token(prompt_lengths, [s.logprobs for s in samples], mask),
        older=older,
        rewards=torch.tensor([s.reward + s.length_reward for s in samples]),
        correct=torch.tensor([s.correct for s in samples]),
        group_ids=torch.tensor([s.group_id for s in samples]),
        minibatches=minibatches([s.group_id for s in samples], grad_steps, rng),
    )


def _rows(batch: TrainBatch, rows: Tensor) -> tuple[Tensor, Tensor, int]:
    """input_ids and attention_mask [n, W] of `rows`, trimmed to their longest sequence W."""
    width = int(batch.attention_mask[rows].sum(dim=1).max().item())
    return batch.input_ids[rows, :width], batch.attention_mask[rows, :width], width


class LocalTrainer:
    """The policy and its optimizer in this process (the `mirrorl.types.Trainer` of one device)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, loss: str,
                 loss_params: Mapping[str, Any], lr: float, grad_clip: float, logprob_chunk_size: int,
                 off_policy_correction: Literal["none", "truncated_is"], is_cap: float) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.loss: Callable[[LossInputs], LossOutput] = partial(LOSSES[loss], **loss_params)
        self.lr, self.grad_clip, self.chunk_size = lr, grad_clip, logprob_chunk_size
        self.correct_off_policy, self.is_cap = off_policy_correction == "truncated_is", is_cap
        self.device = next(model.parameters()).device
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def reset_optimizer(self) -> None:
        self.optimizer = self._new_optimizer()

    def state_dict(self) -> Mapping[str, Tensor]:
        return self.model.state_dict()

    def save(self, directory: Path) -> None:
        save_policy(self.model, self.tokenizer, directory / MODEL_DIR)
        write_optimizer_state(directory, self.optimizer)

    def load_optimizer(self, directory: Path) -> None:
        read_optimizer_state(directory, self.optimizer)

    @torch.no_grad()
    def reference_logprobs(self, batch: TrainBatch, micro: int = 64) -> Tensor:
        """log pi_i [N, T-1] of every token: the behaviour log-probs when pi_i sampled them all,
        else one forward pass of the current weights (still theta_i: no step taken yet)."""
        if not batch.older.any():
            return batch.behaviour_logprobs
        ref = torch.zeros_like(batch.loss_mask)  # [N, T-1]
        for start in range(0, batch.input_ids.shape[0], micro):
            rows = torch.arange(start, min(start + micro, batch.input_ids.shape[0]), device=self.device)
            input_ids, attention_mask, _ = _rows(batch, rows)
            out = sequence_logprobs(self.model, input_ids, attention_mask, self.chunk_size)
            ref[rows, : out.logprobs.shape[1]] = out.logprobs
        return ref

    def train_step(self, batch: TrainBatch, lr: float) -> StepMetrics:
        batch = batch.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ref = self.reference_logprobs(batch)  # [N, T-1]
        weights = None  # off-policy correction of partial rollouts' older segments
        if self.correct_off_policy and batch.older.any():
            weights = stale_weights(ref, batch.behaviour_logprobs, batch.older, cap=self.is_cap)  # [N]
        totals: Counter[str] = Counter()
        entropy_sum = 0.0
        self.model.train()
        for rows in batch.minibatches:
            input_ids, attention_mask, width = _rows(batch, rows)
            mask = batch.loss_mask[rows, : width - 1]  # [n, W-1]
            current = sequence_logprobs(self.model, input_ids, attention_mask, self.chunk_size, with_entropy=True)
            entropy_sum += float((current.entropy * mask).sum())
            out = self.loss(LossInputs(
                logprobs=current.logprobs, ref_logprobs=ref[rows, : width - 1], mask=mask,
                rewards=batch.rewards[rows], correct=batch.correct[rows], group_ids=batch.group_ids[rows],
                weights=None if weights is None else weights[rows],
            ))
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            totals.update({**out.metrics, "grad_norm": float(grad_norm)})
        self.model.eval()
        steps = len(batch.minibatches)
        return StepMetrics(
            loss={key: value / steps for key, value in totals.items()},
            entropy=entropy_sum / max(1.0, float(batch.loss_mask.sum())),
            stale_weight_mean=None if weights is None else float(weights.mean()),
        )
