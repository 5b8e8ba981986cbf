"""Training a classic value-head reward model (k1.5 sec. 2.3.5): `mirrorl train-rm`.

The model and its scoring are `mirrorl.rewards.reward_models.value_head`.

Training: pairwise Bradley-Terry on {prompt, chosen, rejected} rows (primary), or pointwise BCE
on {prompt, response, label} rows; an optional `answer` field is the reference. Pairwise is the
default because (1) it is how reward models are usually trained and their data usually comes
(InstructGPT, Ouyang et al. 2022); (2) only score differences between responses to the same
question are trained, so a per-question offset cancels and the head need not learn how hard each
question is, only what makes one response right and another wrong; (3) correctness labels turn
into pairs (a right and a wrong response to one question) but pairs do not turn into labels. Its
cost: the scores are calibrated only up to a shift, hence `offset` in ValueHeadRMConfig.

Does not: train on several GPUs, pack sequences, or regularise the score's scale.

Legend: B rows of a batch, T the longest row.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from mirrorl.config import ModelConfig, RMTrainConfig
from mirrorl.data.io import read_rows
from mirrorl.models import build_tiny, save_policy
from mirrorl.rewards.reward_models.value_head import (
    TEMPLATE_KEY,
    RMInput,
    encode_input,
    load_value_head,
    score_ids,
)
from mirrorl.train.metrics import MetricsLogger, progress_bar
from mirrorl.train.sft import adamw_one_cycle


@dataclass(frozen=True)
class Pair:
    """A pairwise training row: two responses to one question, the first preferred."""

    chosen: RMInput
    rejected: RMInput


@dataclass(frozen=True)
class Labelled:
    """A pointwise training row."""

    input: RMInput
    label: bool


@dataclass
class BatchLoss:
    loss: Tensor  # scalar
    accuracy: float  # pairwise: share of pairs ranked right; pointwise: share of labels predicted


@dataclass
class RMTrainResult:
    steps: int
    final_loss: float
    train_accuracy: float  # of the last batch
    eval_accuracy: float | None  # held-out; None when nothing is held out
    num_train: int
    num_eval: int
    seconds: float
    output_dir: Path
    model: PreTrainedModel  # the trained model, as saved in output_dir
    tokenizer: PreTrainedTokenizerBase

    def summary(self) -> dict[str, float | int | str | None]:
        """The numbers, for a JSON line."""
        return {"steps": self.steps, "final_loss": self.final_loss, "train_accuracy": self.train_accuracy,
                "eval_accuracy": self.eval_accuracy, "num_train": self.num_train, "num_eval": self.num_eval,
                "seconds": round(self.seconds, 2), "output_dir": str(self.output_dir)}


# ---------------------------------------------------------------------------------------------
# Losses (pure).

def pairwise_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Bradley-Terry: mean of -log sigmoid(s_chosen - s_rejected); chosen, rejected: [B].

    >>> round(pairwise_loss(torch.tensor([0.0]), torch.tensor([0.0])).item(), 4)  # log 2
    0.6931
    """
    return F.softplus(rejected - chosen).mean()  # softplus(-x) = -log sigmoid(x), stable for large |x|


def pointwise_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of sigmoid(score) against 0/1 labels; scores, labels: [B]."""
    return F.binary_cross_entropy_with_logits(scores, labels)


# ---------------------------------------------------------------------------------------------
# Data.

def load_rm_rows(path: str, objective: str) -> list[Pair] | list[Labelled]:
    """Validated training rows; ValueError names the file and row (1-based) of a bad one."""
    source = Path(path)
    if not source.exists():
        raise ValueError(f"reward-model data file {path} does not exist")
    texts = ("chosen", "rejected") if objective == "pairwise" else ("response",)
    rows: list = []
    for number, row in read_rows(source):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ValueError(f"{path}:{number}: row has no 'prompt' (a non-empty string)")
        for name in texts:
            if not isinstance(row.get(name), str):
                raise ValueError(f"{path}:{number}: row has no {name!r} (a string)")
        answer = row.get("answer")
        reference = "" if answer is None else str(answer)
        inputs = [RMInput(row["prompt"], reference, row[name]) for name in texts]
        if objective == "pairwise":
            rows.append(Pair(*inputs))
            continue
        label = row.get("label")
        if not (isinstance(label, bool) or (type(label) is int and label in (0, 1))):
            raise ValueError(f"{path}:{number}: row's 'label' must be true/false or 1/0, got {label!r}")
        rows.append(Labelled(inputs[0], bool(label)))
    if not rows:
        raise ValueError(f"reward-model data file {path} holds no rows")
    return rows


# ---------------------------------------------------------------------------------------------
# Training.

@dataclass(frozen=True)
class EncodedRow:
    """A training row in token ids: pairwise (chosen, rejected), or pointwise (response,) with its label."""

    sequences: tuple[list[int], ...]
    label: float | None  # pointwise: 1.0 or 0.0; pairwise: None


def encode_rows(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Pair | Labelled], template: str,
                max_length: int) -> list[EncodedRow]:
    encode = lambda item: encode_input(tokenizer, template, item, max_length)  # noqa: E731
    return [EncodedRow((encode(r.chosen), encode(r.rejected)), None) if isinstance(r, Pair)
            else EncodedRow((encode(r.input),), float(r.label)) for r in rows]


def _pairwise_batch(model: PreTrainedModel, batch: Sequence[EncodedRow], pad_id: int) -> BatchLoss:
    scores = score_ids(model, [r.sequences[0] for r in batch] + [r.sequences[1] for r in batch], pad_id)  # [2B]
    chosen, rejected = scores[: len(batch)], scores[len(batch) :]  # [B], [B]
    return BatchLoss(pairwise_loss(chosen, rejected), (chosen > rejected).float().mean().item())


def _pointwise_batch(model: PreTrainedModel, batch: Sequence[EncodedRow], pad_id: int) -> BatchLoss:
    scores = score_ids(model, [r.sequences[0] for r in batch], pad_id)  # [B]
    labels = torch.tensor([float(r.label) for r in batch], device=scores.device)  # [B]
    return BatchLoss(pointwise_loss(scores, labels), ((scores > 0) == (labels > 0.5)).float().mean().item())


BATCH_LOSSES = {"pairwise": _pairwise_batch, "pointwise": _pointwise_batch}


@torch.no_grad()
def evaluate(model: PreTrainedModel, rows: Sequence[EncodedRow], objective: str, pad_id: int,
             batch_size: int) -> float:
    """Held-out accuracy: pairs ranked right (ties are wrong), or labels predicted at score 0."""
    model.eval()
    right = 0.0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        right += BATCH_LOSSES[objective](model, batch, pad_id).accuracy * len(batch)
    return right / len(rows)


def fit(model: PreTrainedModel, rows: Sequence[EncodedRow], cfg: RMTrainConfig, pad_id: int,
        logger: MetricsLogger, seed: int) -> BatchLoss:
    """`cfg.steps` AdamW steps on shuffled batches (reshuffled every epoch); returns the last batch's loss."""
    optimizer, schedule = adamw_one_cycle(model, cfg.lr, cfg.weight_decay, cfg.steps, cfg.warmup_ratio)
    rng, order = random.Random(seed), []
    model.train()
    with progress_bar() as bar:
        task = bar.add_task("rm", total=cfg.steps, info="")
        for step in range(cfg.steps):
            if len(order) < cfg.batch_size:
                order += rng.sample(list(rows), len(rows))
            batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
            result = BATCH_LOSSES[cfg.objective](model, batch, pad_id)
            result.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            logger.log(step, {"loss": result.loss.item(), "accuracy": result.accuracy,
                              "grad_norm": grad_norm.item(), "lr": schedule.get_last_lr()[0]})
            bar.update(task, advance=1, info=f"loss {result.loss.item():.3f} acc {result.accuracy:.2f}")
    model.eval()
    return result


def build_value_head(base: str | None, tiny: ModelConfig, seed: int, device: torch.device,
                     dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model to train: `base` with a one-output head, or a fresh tiny Llama classifier when None."""
    if base is not None:
        return load_value_head(base, device, dtype)
    causal, tokenizer = build_tiny(tiny, seed)
    config = causal.config  # the tiny LlamaConfig, pad_token_id included
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
    return model.to(device=device, dtype=dtype), tokenizer


def split_rows(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Shuffle with `seed` and hold out round(eval_fraction * n) rows (at least one if the fraction is > 0)."""
    order = list(rows)
    random.Random(seed).shuffle(order)
    num_eval = max(1, round(eval_fraction * len(order))) if eval_fraction > 0 else 0
    if num_eval >= len(order):
        raise ValueError(f"{len(order)} reward-model rows leave none to train on after holding out {num_eval}")
    return order[num_eval:], order[:num_eval]


def load_rm_data(cfg: RMTrainConfig, seed: int) -> tuple[list[Pair] | list[Labelled], list[Pair] | list[Labelled]]:
    """Training and held-out rows: `eval_path`, or `eval_fraction` of `train_path` held out with `seed`."""
    if cfg.train_path is None:
        raise ValueError("rm.train_path is not set: give a JSONL file of {prompt, chosen, rejected} rows")
    rows = load_rm_rows(cfg.train_path, cfg.objective)
    if cfg.eval_path is not None:
        return rows, load_rm_rows(cfg.eval_path, cfg.objective)
    return split_rows(rows, cfg.eval_fraction, seed)


def train_reward_model(cfg: RMTrainConfig, train_rows: Sequence[Pair | Labelled], eval_rows: Sequence[Pair | Labelled],
                       output_dir: Path, tiny: ModelConfig, seed: int, device: torch.device, dtype: torch.dtype,
                       logger: MetricsLogger) -> RMTrainResult:
    """Train a value-head RM on `train_rows`, measure accuracy on `eval_rows`, save it to `output_dir`.

    `tiny` is the shape of the model built when `cfg.base` is None.
    """
    start = time.perf_counter()
    model, tokenizer = build_value_head(cfg.base, tiny, seed, device, dtype)
    setattr(model.config, TEMPLATE_KEY, cfg.template)
    pad_id = tokenizer.pad_token_id
    last = fit(model, encode_rows(tokenizer, train_rows, cfg.template, cfg.max_length), cfg, pad_id, logger, seed)
    held_out = encode_rows(tokenizer, eval_rows, cfg.template, cfg.max_length)
    eval_accuracy = evaluate(model, held_out, cfg.objective, pad_id, cfg.batch_size) if held_out else None
    if eval_accuracy is not None:
        logger.log(cfg.steps, {"eval_accuracy": eval_accuracy})
    save_policy(model, tokenizer, output_dir)
    return RMTrainResult(cfg.steps, last.loss.item(), last.accuracy, eval_accuracy, len(train_rows),
                         len(eval_rows), time.perf_counter() - start, output_dir, model, tokenizer)
