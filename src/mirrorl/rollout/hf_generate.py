"""Batched sampling through Hugging Face `generate()`: the reference rollout path.

Prompts are left-padded and decoded together with the KV cache `generate()` keeps; each result
carries its new tokens (EOS included when it stopped) and why it ended ("stop" or "length").
RL and evaluation use mirrorl's engine (`mirrorl.rollout.engine`); this path is what the engine
is tested and benchmarked against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from mirrorl.types import SamplingParams


@dataclass
class Generated:
    token_ids: list[int]  # new tokens, EOS included when the sequence stopped
    finish_reason: str  # "stop" | "length"


@torch.no_grad()
def hf_generate(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    eos_id: int,
    pad_id: int,
    seed: int,
) -> list[Generated]:
    """Sample one response per prompt, `params.batch_size` prompts at a time."""
    device = next(model.parameters()).device
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    greedy = params.temperature == 0
    results: list[Generated] = []
    try:
        for start in range(0, len(prompts), params.batch_size):
            chunk = prompts[start : start + params.batch_size]
            width = max(len(p) for p in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, prompt in enumerate(chunk):
                input_ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
                attention_mask[row, width - len(prompt) :] = 1
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                do_sample=not greedy,
                temperature=None if greedy else params.temperature,
                # explicit 1.0 and 0 switch off generate()'s default top-k of 50: sampling is from pi
                top_p=None if greedy else params.top_p,
                top_k=None if greedy else params.top_k,
                max_new_tokens=params.max_new_tokens,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            )
            for row in output[:, width:].tolist():
                if eos_id in row:
                    results.append(Generated(row[: row.index(eos_id) + 1], "stop"))
                else:
                    results.append(Generated(row, "length"))
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return results
