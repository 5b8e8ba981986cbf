"""Classic value-head reward model (k1.5 sec. 2.3.5): a scalar score of (question, reference, response).

Model: a Hugging Face sequence-classification model with one output (`num_labels=1`, e.g.
LlamaForSequenceClassification); the score is a linear map of the hidden state of the last
non-pad token, so `pad_token_id` is set in its config. Input: the template filled with the
question and reference answer, then the response, then EOS (when EOS is not the pad token); a
too-long input keeps the response's tail, where its answer is. The template is saved in the
model's config, so scoring reads the input exactly as training did.

Training it (`mirrorl train-rm`) is `mirrorl.train.reward_model`.

The report compares this model (84% accurate) with the CoT RM (98.5%, `cot.py`) and used the
latter in RL.

Legend: B rows of a batch, T the longest row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mirrorl.config import ValueHeadRMConfig
from mirrorl.config.rewards import VALUE_HEAD_TEMPLATE
from mirrorl.models import first_line, pick_device, pick_dtype
from mirrorl.rewards.batch import BatchFirst
from mirrorl.rewards.reward_models.common import fill_template
from mirrorl.types import Problem

TEMPLATE_KEY = "mirrorl_rm_template"  # model-config attribute holding the input template


@dataclass(frozen=True)
class RMInput:
    """What the reward model reads: (question, reference answer, response)."""

    question: str
    reference: str
    response: str


# ---------------------------------------------------------------------------------------------
# Scores.

def map_score(score: float, mapping: str, offset: float) -> float:
    """A reward from a raw score (see ValueHeadRMConfig.mapping).

    >>> map_score(0.3, "threshold", 0.0), map_score(-0.3, "threshold", 0.0), map_score(2.0, "sigmoid", 2.0)
    (1.0, 0.0, 0.5)
    """
    if mapping == "raw":
        return score
    if mapping == "sigmoid":
        return torch.sigmoid(torch.tensor(score - offset, dtype=torch.float64)).item()
    assert mapping == "threshold", mapping
    return 1.0 if score >= offset else 0.0


# ---------------------------------------------------------------------------------------------
# Encoding and scoring.

def encode_input(tokenizer: PreTrainedTokenizerBase, template: str, item: RMInput, max_length: int) -> list[int]:
    """Token ids of template(question, reference) + response + EOS, at most `max_length`.

    The prefix gets the tokenizer's own special tokens (BOS for Llama, none for Qwen). When too
    long, the response keeps its tail with at least half the window, and the part before it keeps
    its own tail in the rest.
    """
    prefix = tokenizer(fill_template(template, item.question, item.reference))["input_ids"]
    body = tokenizer(item.response, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    end = [eos] if eos is not None and eos != tokenizer.pad_token_id else []
    room = max_length - len(end)
    keep = min(len(body), max(room - len(prefix), room // 2))
    return prefix[max(0, len(prefix) - (room - keep)):] + body[len(body) - keep:] + end


def score_ids(model: PreTrainedModel, rows: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """Scores [B] of right-padded rows (with gradients when the caller allows them)."""
    device = next(model.parameters()).device
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)  # [B, T]
    mask = torch.zeros_like(ids)  # [B, T]
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float()  # [B]


def input_template(model: PreTrainedModel) -> str:
    """The template the model was trained with (saved in its config by `train_reward_model`)."""
    return getattr(model.config, TEMPLATE_KEY, VALUE_HEAD_TEMPLATE)


@torch.no_grad()
def score_inputs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[RMInput],
                 max_length: int, batch_size: int) -> list[float]:
    """Raw scores of `items`, in order."""
    was_training = model.training
    model.eval()
    template = input_template(model)
    rows = [encode_input(tokenizer, template, item, max_length) for item in items]
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
        scores += score_ids(model, rows[start : start + batch_size], tokenizer.pad_token_id).tolist()
    model.train(was_training)
    return scores


def load_value_head(path: str, device: torch.device,
                    dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A one-output sequence-classification model and its tokenizer; ValueError names the path.

    A causal-LM checkpoint loads too (its score head starts random).
    """
    local = Path(path)
    if local.exists() and not (local / "config.json").is_file():
        raise ValueError(f"reward model path {path!r} has no config.json: expected a Hugging Face model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load reward model {path!r}: {first_line(err)}") from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


class ValueHeadReward(BatchFirst):
    """A trained value-head RM as a batch reward: `rm(responses, problems)`.

    The model is loaded from `config.path` on first use. It has no failure mode of its own, so it
    never returns None; a broken model raises.
    """

    def __init__(self, config: ValueHeadRMConfig) -> None:
        self.config = config
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None

    def _ready(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        if self._model is None:
            if self.config.path is None:
                raise ValueError("rewards.value_rm.path is not set: the value-head RM needs a model directory")
            device = pick_device(self.config.device)
            dtype = pick_dtype(self.config.dtype, device)
            self._model, self._tokenizer = load_value_head(self.config.path, device, dtype)
        assert self._tokenizer is not None
        return self._model, self._tokenizer

    def __call__(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[float | None]:
        """Rewards of the responses to their problems, in order (raw scores through `config.mapping`)."""
        return [map_score(s, self.config.mapping, self.config.offset) for s in self.raw_scores(responses, problems)]

    def raw_scores(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[float]:
        """Scores of the responses before the mapping, in order."""
        model, tokenizer = self._ready()
        inputs = [RMInput(problem.prompt, problem.answer, response) for response, problem in zip(responses, problems)]
        return score_inputs(model, tokenizer, inputs, self.config.max_length, self.config.batch_size)
