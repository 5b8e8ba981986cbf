"""Long-CoT supervised fine-tuning (k1.5 sec. 2.2): the warm-up before RL.

Loss: mean negative log-likelihood over response tokens only (prompt tokens are context).
Batches are length-bucketed: examples are shuffled, then sorted by length inside windows of a few
batches (`sft.bucket_window`), so a batch holds sequences of similar length and less padding,
while the order of batches stays random. The schedule is one-cycle (linear warm-up, cosine decay to 0).

Not covered here: packing several examples into one row (bucketing already keeps padding low on
our data), multi-GPU (see `mirrorl.train.distributed` when it exists).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from mirrorl.algo.logprobs import sequence_logprobs
from mirrorl.config import SFTConfig
from mirrorl.data.encode import pad_batch
from mirrorl.train.metrics import MetricsLogger, progress_bar


@dataclass
class SFTExample:
    prompt_ids: list[int]
    response_ids: list[int]


@dataclass
class SFTResult:
    steps: int
    final_loss: float
    tokens_per_second: float


def bucketed_batches(
    examples: Sequence[SFTExample], batch_size: int, window_batches: int, rng: random.Random
) -> Iterator[list[SFTExample]]:
    """Endless length-bucketed batches (each example once per epoch)."""
    while True:
        order = list(examples)
        rng.shuffle(order)
        window = batch_size * window_batches
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda e: len(e.prompt_ids) + len(e.response_ids))
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        yield from batches


def one_cycle(step: int, total: int, warmup_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at the last step."""
    warmup = max(1, int(total * warmup_ratio))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def sft_loss(model: PreTrainedModel, batch: list[SFTExample], pad_id: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Token-mean NLL over response tokens, and the number of those tokens."""
    padded = pad_batch([e.prompt_ids for e in batch], [e.response_ids for e in batch], pad_id, device)
    logprobs = sequence_logprobs(model, padded.input_ids, padded.attention_mask).logprobs  # [B, T-1]
    num_tokens = int(padded.response_mask.sum().item())
    return -(logprobs * padded.response_mask).sum() / max(1, num_tokens), num_tokens


def train_sft(
    model: PreTrainedModel,
    examples: Sequence[SFTExample],
    cfg: SFTConfig,
    pad_id: int,
    logger: MetricsLogger,
    seed: int,
) -> SFTResult:
    """Run `cfg.steps` optimizer steps of long-CoT SFT on `examples`."""
    kept = [e for e in examples if len(e.prompt_ids) + len(e.response_ids) <= cfg.max_len]
    if not kept:
        raise ValueError(f"no SFT example fits sft.max_len={cfg.max_len} tokens")
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: one_cycle(s, cfg.steps, cfg.warmup_ratio))
    batches = bucketed_batches(kept, cfg.batch_size, cfg.bucket_window, random.Random(seed))
    model.train()
    start, seen_tokens, loss_value = time.perf_counter(), 0, float("nan")
    with progress_bar() as bar:
        task = bar.add_task("sft", total=cfg.steps, info="")
        for step in range(cfg.steps):
            loss, num_tokens = sft_loss(model, next(batches), pad_id, device)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            seen_tokens += num_tokens
            loss_value = loss.item()
            elapsed = time.perf_counter() - start
            logger.log(step, {
                "loss": loss_value, "grad_norm": grad_norm.item(), "lr": schedule.get_last_lr()[0],
                "tokens_per_second": seen_tokens / elapsed,
            })
            bar.update(task, advance=1, info=f"loss {loss_value:.3f}")
    model.eval()
    return SFTResult(cfg.steps, loss_value, seen_tokens / (time.perf_counter() - start))
