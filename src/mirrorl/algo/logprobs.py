"""Per-token log-probabilities of a causal LM, computed without a full [B, T, V] float tensor.

The RL losses need log pi(token) at every response position. Materialising the logits of a long
batch costs B*T*V floats (e.g. 64 x 8k x 150k = 300 GB in fp32), so the LM head is applied in
chunks of rows of the flattened [B*T, H] hidden states; each chunk is recomputed in the backward
pass (activation checkpointing), so neither pass holds more than `chunk_size` x V logits.

Legend: B sequences, T positions, H hidden size, V vocabulary, N = B*T rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _at_least_fp32(logits: Tensor) -> Tensor:
    """Half-precision logits are upcast for the softmax; fp32 and fp64 stay as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


@dataclass
class TokenLogProbs:
    logprobs: Tensor  # [B, T-1]: position t is log p(input_ids[t+1] | input_ids[:t+1])
    entropy: Tensor | None  # [B, T-1], no grad; None unless asked for


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """Reference: log-softmax of full logits [B, T, V] gathered at targets [B, T] -> [B, T]."""
    return torch.log_softmax(_at_least_fp32(logits), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _chunk_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
    logits = _at_least_fp32(F.linear(hidden, weight, bias))  # [n, V]
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # [n]


@torch.no_grad()
def _chunk_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    logp = torch.log_softmax(_at_least_fp32(F.linear(hidden, weight, bias)), dim=-1)  # [n, V]
    return -(logp.exp() * logp).sum(-1)  # [n]


def logprobs_from_hidden(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    chunk_size: int,
    with_entropy: bool = False,
    lm_head_bias: Tensor | None = None,
) -> TokenLogProbs:
    """log p(targets) from hidden states [B, T, H] and the head [V, H], `chunk_size` rows at a time."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, length, size = hidden.shape
    flat_hidden = hidden.reshape(-1, size)  # [N, H]
    flat_targets = targets.reshape(-1)  # [N]
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad)
    pieces, entropies = [], []
    for start in range(0, flat_hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        args = (flat_hidden[rows], lm_head_weight, lm_head_bias, flat_targets[rows])
        if needs_grad:
            pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))  # [n]
        else:
            pieces.append(_chunk_logprobs(*args))  # [n]
        if with_entropy:
            entropies.append(_chunk_entropy(flat_hidden[rows].detach(), lm_head_weight.detach(), lm_head_bias))
    logprobs = torch.cat(pieces).reshape(batch, length)  # [B, T]
    entropy = torch.cat(entropies).reshape(batch, length) if with_entropy else None  # [B, T]
    return TokenLogProbs(logprobs, entropy)


def sequence_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> TokenLogProbs:
    """Log-probs [B, T-1] of each next token of `input_ids` [B, T] under a Hugging Face causal LM.

    Runs the decoder body for hidden states and applies the output embedding in chunks. Models
    whose body or head cannot be reached this way (or that post-process logits, e.g. soft-capping)
    fall back to full logits. Position ids follow the attention mask, so left or right padding
    give the same values on real tokens.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings()
    plain_head = isinstance(head, torch.nn.Linear) and getattr(model.config, "final_logit_softcapping", None) is None
    if body is None or not plain_head or getattr(model.config, "logit_scale", None) is not None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        logprobs = token_logprobs(logits[:, :-1], input_ids[:, 1:])  # [B, T-1]
        entropy = None
        if with_entropy:
            with torch.no_grad():
                logp = torch.log_softmax(_at_least_fp32(logits[:, :-1]), dim=-1)  # [B, T-1, V]
                entropy = -(logp.exp() * logp).sum(-1)  # [B, T-1]
        return TokenLogProbs(logprobs, entropy)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    return logprobs_from_hidden(
        hidden[:, :-1], head.weight, input_ids[:, 1:], chunk_size, with_entropy, head.bias
    )  # [B, T-1]
