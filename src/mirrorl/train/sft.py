"""Long-CoT supervised fine-tuning (k1.5 sec. 2.2): the warm-up before RL.

Loss: mean negative log-likelihood over response tokens only (prompt tokens are context).
Batches are shuffled and padded only to their own longest row. Length bucketing is an option
(`sft.bucket_window`: examples sorted by length inside windows of a few batches, batch order still
random); it is off by default because on the demo task it slowed learning (see the field).
The schedule is one-cycle (linear warm-up, cosine decay to 0).

Resume (`checkpointing`): a checkpoint at step s holds the weights, AdamW and one-cycle scheduler
state, the RNG states and the batch iterator's position; a resumed run trains steps s.. exactly as
an uninterrupted one would. Resuming with a larger `sft.steps` stretches the one-cycle schedule
from the resumed step on (its shape depends on the total).

Not covered here: packing several examples into one row; multi-GPU training.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from mirrorl.algo.logprobs import sequence_logprobs
from mirrorl.algo.schedule import one_cycle
from mirrorl.config import SFTConfig
from mirrorl.data.encode import pad_batch
from mirrorl.train.metrics import MetricsLogger, progress_bar
from mirrorl.train.resume import Checkpointing
from mirrorl.train.state import capture_rng, read_training_state, restore_rng


@dataclass
class SFTExample:
    prompt_ids: list[int]
    response_ids: list[int]


@dataclass
class SFTResult:
    steps: int  # trained by this call (fewer than sft.steps when resumed)
    final_loss: float
    tokens_per_second: float


def _token_lists(example: Any) -> list[list[int]]:
    """The token-id lists of an example dataclass (SFT's prompt and response, DPO's three)."""
    return [getattr(example, field.name) for field in dataclasses.fields(example)]


class BucketedBatches:
    """Endless length-bucketed batches, each example once per epoch, resumable from `state_dict()`.

    Examples are dataclasses of token-id lists (`SFTExample`, DPO's pairs); an example's length is
    the sum of theirs.

    One random.Random(seed) shuffles every epoch in turn. The state is that generator's state at
    the start of the current epoch and the position in it: loading it rebuilds the epoch (drawing
    from the generator exactly as the first time) and continues at the next batch, so a resumed
    run sees the batches of an uninterrupted one, across epoch boundaries too.
    """

    def __init__(self, examples: Sequence[Any], batch_size: int, window_batches: int, seed: int) -> None:
        self.examples, self.batch_size, self.window = list(examples), batch_size, batch_size * window_batches
        self.rng = random.Random(seed)
        self.epoch_start = self.rng.getstate()
        self.epoch, self.position = -1, 0
        self.batches: list[list[SFTExample]] = []

    def _build_epoch(self) -> None:
        order = list(self.examples)
        self.rng.shuffle(order)
        self.batches = []
        for start in range(0, len(order), self.window):
            chunk = sorted(order[start : start + self.window], key=lambda e: sum(map(len, _token_lists(e))))
            self.batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        self.rng.shuffle(self.batches)

    def __iter__(self) -> Iterator[list[Any]]:
        return self

    def __next__(self) -> list[Any]:
        if self.position >= len(self.batches):
            self.epoch_start = self.rng.getstate()
            self._build_epoch()
            self.epoch, self.position = self.epoch + 1, 0
        self.position += 1
        return self.batches[self.position - 1]

    @functools.cached_property
    def digest(self) -> str:
        """sha256 over the examples' token ids: a resumed run must batch the same examples."""
        digest = hashlib.sha256()
        for example in self.examples:
            for ids in (*_token_lists(example), [-1]):  # -1 separates the fields
                digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss_next = self.epoch_start
        return {"epoch": self.epoch, "position": self.position, "num_examples": len(self.examples),
                "examples_sha256": self.digest, "rng_at_epoch_start": [version, list(internal), gauss_next]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_examples"] != len(self.examples) or state["examples_sha256"] != self.digest:
            raise ValueError(f"the batch state was saved over other examples ({state['num_examples']}); "
                             f"the data now gives {len(self.examples)} (was the data file changed?)")
        version, internal, gauss_next = state["rng_at_epoch_start"]
        self.epoch_start = (version, tuple(internal), gauss_next)
        self.rng.setstate(self.epoch_start)
        self.batches, self.epoch, self.position = [], state["epoch"], state["position"]
        if self.epoch >= 0:
            self._build_epoch()


def sft_loss(model: PreTrainedModel, batch: list[SFTExample], pad_id: int,
             device: torch.device) -> tuple[torch.Tensor, int]:
    """Token-mean NLL over response tokens, and the number of those tokens."""
    padded = pad_batch([e.prompt_ids for e in batch], [e.response_ids for e in batch], pad_id, device)
    logprobs = sequence_logprobs(model, padded.input_ids, padded.attention_mask).logprobs  # [B, T-1]
    num_tokens = int(padded.response_mask.sum().item())
    return -(logprobs * padded.response_mask).sum() / max(1, num_tokens), num_tokens


def adamw_one_cycle(model: torch.nn.Module, lr: float, weight_decay: float, steps: int,
                    warmup_ratio: float) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The fine-tuning phases' optimizer (SFT, DPO, the reward model): AdamW with betas (0.9, 0.95) on a
    one-cycle schedule over `steps`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: one_cycle(s, steps, warmup_ratio))


@dataclass
class StepLoss:
    """One batch's loss, the figures to log with it, and the tokens it covered."""

    loss: torch.Tensor
    metrics: dict[str, float]  # "loss" at least
    num_tokens: int


def optimize(model: PreTrainedModel, cfg: SFTConfig, phase: str, first: int, step_loss: Callable[[], StepLoss],
             optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler, ckpt: Checkpointing,
             logger: MetricsLogger, save: Callable[[int, dict[str, float]], Path | None],
             last: dict[str, float]) -> tuple[dict[str, float], float]:
    """Optimizer steps `first`..`cfg.steps` of a fine-tuning phase (SFT, DPO), each on `step_loss()`: clipped,
    logged, on a progress bar; `save(step, last figures)` at checkpoint boundaries, on a stop signal and at the
    end. Returns the last step's figures and the tokens per second."""
    model.train()
    start, seen_tokens = time.perf_counter(), 0
    with ckpt.signals(), progress_bar() as bar:
        task = bar.add_task(phase, total=cfg.steps, completed=first, info="")
        for step in range(first, cfg.steps):
            ckpt.boundary(step, first, phase, functools.partial(save, step, last))
            out = step_loss()
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            seen_tokens += out.num_tokens
            last = out.metrics
            logger.log(step, {**last, "grad_norm": grad_norm.item(), "lr": schedule.get_last_lr()[0],
                              "tokens_per_second": seen_tokens / (time.perf_counter() - start)})
            bar.update(task, advance=1, info=f"loss {last['loss']:.3f}")
        if first < cfg.steps:
            save(cfg.steps, last)
    model.eval()
    return last, seen_tokens / (time.perf_counter() - start)


def train_sft(
    model: PreTrainedModel,
    examples: Sequence[SFTExample],
    cfg: SFTConfig,
    pad_id: int,
    logger: MetricsLogger,
    seed: int,
    checkpointing: Checkpointing | None = None,
) -> SFTResult:
    """Run `cfg.steps` optimizer steps of long-CoT SFT on `examples` (from `checkpointing.resume` if set)."""
    kept = [e for e in examples if len(e.prompt_ids) + len(e.response_ids) <= cfg.max_len]
    if not kept:
        raise ValueError(f"no SFT example fits sft.max_len={cfg.max_len} tokens")
    ckpt = checkpointing or Checkpointing.off()
    device = next(model.parameters()).device
    optimizer, schedule = adamw_one_cycle(model, cfg.lr, cfg.weight_decay, cfg.steps, cfg.warmup_ratio)
    batches = BucketedBatches(kept, cfg.batch_size, cfg.bucket_window, seed)
    first, last = 0, {"loss": float("nan")}
    if ckpt.resume is not None:
        state = read_training_state(ckpt.resume.path, optimizer, schedule)
        first, last = state.trainer["step"], {"loss": state.trainer["loss"]}
        batches.load_state_dict(state.trainer["batches"])
        restore_rng(state.rng)

    def save(step: int, last: dict[str, float]) -> Path | None:
        trainer = {"step": step, "loss": last["loss"], "batches": batches.state_dict()}
        return ckpt.save(step, model, optimizer, trainer, capture_rng(), schedule)

    def step_loss() -> StepLoss:
        loss, num_tokens = sft_loss(model, next(batches), pad_id, device)
        return StepLoss(loss, {"loss": loss.item()}, num_tokens)

    last, tokens_per_second = optimize(model, cfg, "sft", first, step_loss, optimizer, schedule, ckpt, logger, save,
                                       last)
    return SFTResult(cfg.steps - first, last["loss"], tokens_per_second)
