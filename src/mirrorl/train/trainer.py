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

import inspect
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mirrorl.algo.logprobs import sequence_logprobs
from mirrorl.algo.losses import LOSSES, LossInputs, LossOutput, stale_weights
from mirrorl.config import Config
from mirrorl.data.encode import pad_batch
from mirrorl.models import save_policy
from mirrorl.train.resume import MODEL_DIR
from mirrorl.train.state import read_optimizer_state, write_optimizer_state
from mirrorl.types import Sample, StepMetrics, TrainBatch

OPTIMIZER_SHARDS = "optimizer_shards"  # in a checkpoint: FSDP2 learners' optimizer state (torch.distributed.checkpoint)


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


class PolicyLogProbs(torch.nn.Module):
    """The policy as a module whose forward returns per-token log-probs (and entropies): the module
    DistributedDataParallel wraps, since its gradient hooks need the forward to run through it."""

    def __init__(self, model: PreTrainedModel, chunk_size: int) -> None:
        super().__init__()
        self.model, self.chunk_size = model, chunk_size
        self.copy_out = False  # FSDP2 hooks its output and warns about views (the chunks come back as one)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, with_entropy: bool = False
                ) -> tuple[Tensor, Tensor | None]:
        out = sequence_logprobs(self.model, input_ids, attention_mask, self.chunk_size, with_entropy)
        if self.copy_out:
            return out.logprobs.clone(), None if out.entropy is None else out.entropy.clone()
        return out.logprobs, out.entropy


@dataclass
class StepShare:
    """One learner rank's part of an optimize phase, as sums, so that the ranks' parts combine exactly."""

    steps: list[tuple[int, dict[str, float]]]  # per optimizer step: the rows this rank trained and its loss figures
    entropy: tuple[float, float]  # sum over trained tokens, their number
    stale_weights: tuple[float, int]  # sum of the off-policy weights, samples
    logprob_gap: tuple[float, float]  # sum of |trainer - generator| log-prob of pi_i's tokens, their number
    sample_weights: dict[int, float]  # batch row -> off-policy weight, for this rank's rows with older tokens


def combine(shares: Sequence[StepShare]) -> StepMetrics:
    """The optimize phase's figures from every rank's share: each step's figures are the row-weighted
    mean over the ranks that trained rows in it, then averaged over the steps."""
    per_step = []
    for parts in zip(*(share.steps for share in shares)):
        rows = sum(n for n, _ in parts)
        keys = {key for n, figures in parts if n for key in figures}
        per_step.append({key: sum(n * figures[key] for n, figures in parts if n) / rows for key in keys})
    loss = {key: sum(step[key] for step in per_step) / len(per_step) for key in per_step[0]} if per_step else {}

    def mean(pairs: list[tuple[float, float]]) -> float | None:
        total, count = map(sum, zip(*pairs))
        return total / count if count else None

    return StepMetrics(loss=loss, entropy=mean([s.entropy for s in shares]) or 0.0,
                       stale_weight_mean=mean([s.stale_weights for s in shares]),
                       logprob_gap=mean([s.logprob_gap for s in shares]),
                       sample_weights={row: w for share in shares for row, w in share.sample_weights.items()})


def _fully_shard(scorer: PolicyLogProbs) -> None:
    """FSDP2 over the learner ranks: each transformer block its own group (the classes Hugging Face
    lists in `_no_split_modules`), the rest (embeddings, final norm, a tied head) in the root's,
    so `sequence_logprobs` may call the decoder and the head directly inside the root's forward.
    The root reshards after every forward too, so no full copy lingers after a no-grad pass."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as err:  # public since torch 2.6
        raise ValueError(f"distributed.strategy=fsdp2 needs torch>=2.6 (this is {torch.__version__})") from err

    blocks = set(getattr(scorer.model, "_no_split_modules", None) or ())
    for module in scorer.model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(scorer, reshard_after_forward=True)
    scorer.copy_out = True


def _data_parallel(module: torch.nn.Module) -> DistributedDataParallel:
    """DDP without syncing buffers on every forward: the policy's buffers (rotary tables) are
    constants, and the sync is a collective that ranks running different forwards would not match.
    (torch 2.13 renamed the switch; older releases, which mirrorl supports, know only the old name.)"""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return DistributedDataParallel(module, forward_sync_buffers=False)
    return DistributedDataParallel(module, broadcast_buffers=False)


class LocalTrainer:
    """The policy and its optimizer in this process (the `mirrorl.types.Trainer` of one device), or
    one rank of a data-parallel learner group when torch.distributed is initialised (`parallel`).

    Data parallel ("ddp": DistributedDataParallel, every rank holds the whole model and optimizer;
    "fsdp2": fully_shard, each rank holds a shard of the parameters, gradients and optimizer state):
    every rank receives the whole `TrainBatch` and, in each mini-batch, trains the groups dealt to
    it (whole groups, so baselines stay per group). A rank's loss, a mean over its own rows (or
    tokens), is rescaled by its share of the mini-batch's total, so the gradient the ranks average
    is that of the whole mini-batch, as in one process. A rank without a group in a mini-batch still
    takes part with a zero loss, so every rank makes the same calls (under FSDP2 every forward is a
    collective, so no-grad passes are matched too).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, loss: str,
                 loss_params: Mapping[str, Any], lr: float, grad_clip: float, logprob_chunk_size: int,
                 off_policy_correction: Literal["none", "truncated_is"], is_cap: float,
                 parallel: Literal["ddp", "fsdp2"] | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.loss: Callable[[LossInputs], LossOutput] = partial(LOSSES[loss], **loss_params)
        self.lr, self.grad_clip = lr, grad_clip
        self.correct_off_policy, self.is_cap = off_policy_correction == "truncated_is", is_cap
        self.device = next(model.parameters()).device
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if parallel else (0, 1)
        self.sharded = parallel == "fsdp2"
        self.scorer = PolicyLogProbs(model, logprob_chunk_size)
        if self.sharded:
            _fully_shard(self.scorer)
        self.trained = _data_parallel(self.scorer) if parallel == "ddp" else self.scorer
        self.optimizer = self._new_optimizer()

    @classmethod
    def from_config(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: Config,
                    distributed: bool = False) -> LocalTrainer:
        """`distributed`: one rank of the torch.distributed group, training by `distributed.strategy`."""
        return cls(model, tokenizer, cfg.algo.loss, cfg.algo.loss_params(), cfg.rl.lr, cfg.rl.grad_clip,
                   cfg.rl.logprob_chunk_size, cfg.rl.off_policy_correction, cfg.rl.is_cap,
                   cfg.distributed.strategy if distributed else None)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def reset_optimizer(self) -> None:
        self.optimizer = self._new_optimizer()

    def state_dict(self) -> Mapping[str, Tensor]:
        """The weights. FSDP2: a collective; rank 0 gets the full weights on the CPU, the others {}."""
        if not self.sharded:
            return self.model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def export(self, directory: Path) -> None:
        """A Hugging Face checkpoint of the policy (FSDP2: every rank gathers, rank 0 writes)."""
        if not self.sharded:
            save_policy(self.model, self.tokenizer, directory)
            return
        full = self.state_dict()
        if self.rank == 0:  # gathered, a tied head is a copy: written once, as the model's own weights would be
            tied = ({name for name, _ in self.model.named_parameters(remove_duplicate=False)}
                    - {name for name, _ in self.model.named_parameters()})
            save_policy(self.model, self.tokenizer, directory,
                        state_dict={name: tensor for name, tensor in full.items() if name not in tied})

    def save(self, directory: Path) -> None:
        """The policy and the optimizer state (FSDP2: every rank writes its optimizer shard, with
        torch.distributed.checkpoint, into `directory`, which all ranks must see)."""
        self.export(directory / MODEL_DIR)
        if not self.sharded:
            write_optimizer_state(directory, self.optimizer)
            return
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        dcp.save({"optimizer": get_optimizer_state_dict(self.scorer, self.optimizer)},
                 checkpoint_id=directory / OPTIMIZER_SHARDS)

    def load_optimizer(self, directory: Path) -> None:
        if not self.sharded:
            read_optimizer_state(directory, self.optimizer)
            return
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        if not (directory / OPTIMIZER_SHARDS).is_dir():
            raise ValueError(f"{directory} has no {OPTIMIZER_SHARDS}/: its optimizer state was not written by "
                             "FSDP2 learners; resume with the distributed.strategy it was trained with")
        state = {"optimizer": get_optimizer_state_dict(self.scorer, self.optimizer)}
        dcp.load(state, checkpoint_id=directory / OPTIMIZER_SHARDS)
        set_optimizer_state_dict(self.scorer, self.optimizer, optim_state_dict=state["optimizer"])

    def share(self, rows: Tensor, group_ids: Tensor) -> Tensor:
        """The rows of `rows` this rank trains: its groups, dealt round-robin in group order."""
        if self.world == 1:
            return rows
        groups = torch.unique(group_ids[rows])[self.rank :: self.world]
        return rows[torch.isin(group_ids[rows], groups)]

    @torch.no_grad()
    def reference_logprobs(self, batch: TrainBatch, rows: Tensor, micro: int = 64) -> Tensor:
        """log pi_i [N, T-1] of every token of `rows` (other rows 0): the behaviour log-probs when pi_i
        sampled them all, else one forward pass of the current weights (still theta_i: no step taken yet)."""
        if not batch.older.any():
            return batch.behaviour_logprobs
        ref = torch.zeros_like(batch.loss_mask)  # [N, T-1]
        chunks = [rows[start : start + micro] for start in range(0, len(rows), micro)]
        calls = len(chunks)
        if self.sharded:  # a forward is a collective: as many as the rank with the most chunks, the extra discarded
            calls = int(self._reduce_over_ranks(float(calls), op=dist.ReduceOp.MAX))
        for index in range(calls):
            chunk = chunks[index] if index < len(chunks) else batch.minibatches[0][:1]
            input_ids, attention_mask, _ = _rows(batch, chunk)
            logprobs, _ = self.scorer(input_ids, attention_mask)  # not through DDP: ranks differ in rows
            if index < len(chunks):
                ref[chunk, : logprobs.shape[1]] = logprobs
        return ref

    def train_step(self, batch: TrainBatch, lr: float) -> StepMetrics:
        return combine([self.train_share(batch, lr)])

    def train_share(self, batch: TrainBatch, lr: float) -> StepShare:
        """The optimize phase on this rank's share of `batch`: an optimizer step per mini-batch."""
        batch = batch.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        shares = [self.share(rows, batch.group_ids) for rows in batch.minibatches]
        mine = torch.cat(shares).sort().values
        ref = self.reference_logprobs(batch, mine)  # [N, T-1]
        weights = None  # off-policy correction of partial rollouts' older segments
        if self.correct_off_policy and batch.older.any():
            weights = stale_weights(ref, batch.behaviour_logprobs, batch.older, cap=self.is_cap)  # [N]
        steps: list[tuple[int, dict[str, float]]] = []
        entropy_sum, tokens, gap = 0.0, 0.0, (0.0, 0.0)
        self.model.train()
        for index, rows in enumerate(shares):
            idle = len(rows) == 0  # this rank has no group in this mini-batch
            if idle:
                rows = batch.minibatches[index][:1]
            input_ids, attention_mask, width = _rows(batch, rows)
            mask = batch.loss_mask[rows, : width - 1]  # [n, W-1]
            logprobs, entropy = self.trained(input_ids, attention_mask, with_entropy=True)
            if idle:
                loss, figures, count = logprobs.sum() * 0.0, {}, 0.0
            else:
                out = self.loss(LossInputs(
                    logprobs=logprobs, ref_logprobs=ref[rows, : width - 1], mask=mask,
                    rewards=batch.rewards[rows], correct=batch.correct[rows], group_ids=batch.group_ids[rows],
                    weights=None if weights is None else weights[rows],
                ))
                loss, figures, count = out.loss, out.metrics, out.count
                entropy_sum, tokens = entropy_sum + float((entropy * mask).sum()), tokens + float(mask.sum())
                if index == 0:  # theta is still theta_i: the trainer's and the generator's log pi_i of the same tokens
                    fresh = mask * (1 - batch.older[rows, : width - 1])
                    behaviour = batch.behaviour_logprobs[rows, : width - 1]
                    gap = (float(((logprobs.detach() - behaviour).abs() * fresh).sum()), float(fresh.sum()))
            loss = loss * self._share_of(count)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            steps.append((0 if idle else len(rows), {**figures, "grad_norm": float(grad_norm)}))
        self.model.eval()
        mine_weights = (0.0, 0) if weights is None else (float(weights[mine].sum()), len(mine))
        stale = [] if weights is None else [int(row) for row in mine if batch.older[row].any()]
        per_sample = {row: float(weights[row]) for row in stale}
        return StepShare(steps, (entropy_sum, tokens), mine_weights, gap, per_sample)

    def _share_of(self, count: float) -> float:
        """The factor that turns a rank's mean over `count` units into its part of the mini-batch mean
        (DDP averages the ranks' gradients): count * ranks / the ranks' total count; 1 in one process."""
        if self.world == 1:
            return 1.0
        total = self._reduce_over_ranks(count)
        return count * self.world / total if total > 0 else 0.0

    def _reduce_over_ranks(self, value: float, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> float:
        reduced = torch.tensor([value], dtype=torch.float64, device=self.device)  # NCCL reduces device tensors
        dist.all_reduce(reduced, op=op)
        return float(reduced)
