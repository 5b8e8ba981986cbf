"""DPO on preference pairs (Rafailov et al. 2023), the k1.5 report's third long2short method (sec. 2.4).

The report builds the pairs from the long model's own samples (`mirrorl.long2short.select`): the
shortest correct response is preferred to wrong ones and to correct ones at least 1.5x longer, so
the policy learns to stop earlier without learning to be wrong. The loss is `algo.losses.dpo_loss`.

The frozen reference is the starting policy. Its sequence log-probs are computed once, before the
first step, and kept with the pairs (and in every checkpoint), so no second model sits in memory
and a resumed run uses exactly the reference of the first. Log-probs come from the chunked head
(`algo.logprobs`); chosen and rejected responses of a batch share one forward pass. Optimizer,
schedule (one-cycle), batching, progress, metrics, checkpoints and resume are SFT's.

Does not: the reference-free variants (SimPO, ORPO), IPO's loss, several epochs' bookkeeping
beyond the endless shuffled batches.

Legend: P pairs in a batch, T positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from mirrorl.algo.logprobs import sequence_logprobs
from mirrorl.algo.losses import PreferenceInputs, dpo_loss
from mirrorl.config import DPOConfig
from mirrorl.data.encode import pad_batch
from mirrorl.train.metrics import MetricsLogger
from mirrorl.train.resume import Checkpointing
from mirrorl.train.sft import BucketedBatches, StepLoss, adamw_one_cycle, optimize
from mirrorl.train.state import capture_rng, read_training_state, restore_rng


@dataclass
class PreferencePair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class DPOResult:
    steps: int  # trained by this call (fewer than dpo.steps when resumed)
    final_loss: float
    reward_accuracy: float  # of the last step: pairs whose implicit reward orders chosen above rejected
    num_pairs: int


def pair_logprobs(model: PreTrainedModel, pairs: Sequence[PreferencePair], pad_id: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs [P] of the chosen and of the rejected responses, in one forward pass."""
    prompts = [p.prompt_ids for p in pairs] * 2
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    padded = pad_batch(prompts, responses, pad_id, device)
    logprobs = sequence_logprobs(model, padded.input_ids, padded.attention_mask).logprobs  # [2P, T-1]
    sums = (logprobs * padded.response_mask).sum(-1)  # [2P]
    return sums[: len(pairs)], sums[len(pairs) :]


@torch.no_grad()
def reference_logprobs(model: PreTrainedModel, pairs: Sequence[PreferencePair], pad_id: int,
                       batch_size: int) -> list[tuple[float, float]]:
    """(chosen, rejected) sequence log-probs of every pair under `model`, the frozen reference."""
    device = next(model.parameters()).device
    out: list[tuple[float, float]] = []
    for start in range(0, len(pairs), batch_size):
        chosen, rejected = pair_logprobs(model, pairs[start : start + batch_size], pad_id, device)
        out += list(zip(chosen.tolist(), rejected.tolist()))
    return out


def train_dpo(model: PreTrainedModel, pairs: Sequence[PreferencePair], cfg: DPOConfig, pad_id: int,
              logger: MetricsLogger, seed: int, checkpointing: Checkpointing | None = None) -> DPOResult:
    """Run `cfg.steps` optimizer steps of DPO on `pairs`, `model` at its start being the reference."""
    kept = [p for p in pairs if len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= cfg.max_len]
    if not kept:
        raise ValueError(f"no DPO pair fits dpo.max_len={cfg.max_len} tokens")
    ckpt = checkpointing or Checkpointing.off()
    device = next(model.parameters()).device
    optimizer, schedule = adamw_one_cycle(model, cfg.lr, cfg.weight_decay, cfg.steps, cfg.warmup_ratio)
    first = 0
    if ckpt.resume is not None:
        state = read_training_state(ckpt.resume.path, optimizer, schedule)
        first, reference = state.trainer["step"], state.trainer["reference"]
        restore_rng(state.rng)
    else:
        model.eval()
        reference = reference_logprobs(model, kept, pad_id, cfg.batch_size)
    if len(reference) != len(kept):
        raise ValueError(f"the checkpoint's reference covers {len(reference)} DPO pairs; the data now gives "
                         f"{len(kept)} (were the pairs changed?)")
    reference_of = {id(pair): ref for pair, ref in zip(kept, reference)}  # the batches hold these very pairs
    batches = BucketedBatches(kept, cfg.batch_size, cfg.bucket_window, seed)
    last = {"loss": float("nan"), "reward_accuracy": 0.0}
    if ckpt.resume is not None:
        batches.load_state_dict(state.trainer["batches"])
        last = {key: state.trainer[key] for key in last}

    def save(step: int, last: dict[str, float]) -> Path | None:
        trainer = {"step": step, "loss": last["loss"], "reward_accuracy": last["reward_accuracy"],
                   "batches": batches.state_dict(), "reference": reference}
        return ckpt.save(step, model, optimizer, trainer, capture_rng(), schedule)

    def step_loss() -> StepLoss:
        batch = next(batches)
        chosen, rejected = pair_logprobs(model, batch, pad_id, device)
        ref = torch.tensor([reference_of[id(p)] for p in batch], dtype=chosen.dtype, device=device)  # [P, 2]
        num_tokens = torch.tensor([len(p.chosen_ids) for p in batch], dtype=chosen.dtype, device=device)  # [P]
        out = dpo_loss(PreferenceInputs(chosen, rejected, ref[:, 0], ref[:, 1], num_tokens), beta=cfg.beta,
                       nll_weight=cfg.nll_weight)
        lengths = {"chosen_tokens": float(num_tokens.mean()),
                   "rejected_tokens": sum(len(p.rejected_ids) for p in batch) / len(batch)}
        seen = sum(len(p.prompt_ids) * 2 + len(p.chosen_ids) + len(p.rejected_ids) for p in batch)
        return StepLoss(out.loss, {**out.metrics, **lengths}, seen)

    last, _ = optimize(model, cfg, "dpo", first, step_loss, optimizer, schedule, ckpt, logger, save, last)
    return DPOResult(cfg.steps - first, last["loss"], last["reward_accuracy"], len(kept))
