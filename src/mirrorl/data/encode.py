"""Turning prompts and responses into token ids, and padded batches into tensors.

Prompts go through the tokenizer's chat template when it has one (and the config asks for it),
so instruction-tuned HF models see the format they were trained on; responses end with EOS so
the policy learns to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool) -> list[int]:
    """Token ids of a prompt, ready for the response to follow."""
    if use_chat_template and tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers >= 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(prompt + "\n", add_special_tokens=False)["input_ids"]


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """Token ids of a response followed by EOS."""
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@dataclass
class PaddedBatch:
    """Right-padded prompt+response sequences.

    Legend: B sequences, T the longest prompt+response.
    """

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long, 1 on real tokens
    response_mask: torch.Tensor  # [B, T-1] float, 1 where position t predicts a response token t+1


def pad_batch(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> PaddedBatch:
    """Concatenate each prompt with its response and right-pad to a common length."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    input_ids = torch.full((len(lengths), max(lengths)), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    response_mask = torch.zeros(len(lengths), max(lengths) - 1)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        input_ids[row, : lengths[row]] = torch.tensor([*prompt, *response], dtype=torch.long)
        attention_mask[row, : lengths[row]] = 1
        response_mask[row, len(prompt) - 1 : lengths[row] - 1] = 1.0
    return PaddedBatch(input_ids.to(device), attention_mask.to(device), response_mask.to(device))
