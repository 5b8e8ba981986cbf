"""Models and tokenizers: Hugging Face in and out, plus a tiny built-in pair for CPU runs.

`load_policy` opens any local Hugging Face causal LM directory (or a hub name when the machine
has network) with `from_pretrained`; `save_policy` writes `save_pretrained` output (safetensors)
that `from_pretrained` reads back on its own. `build_tiny` makes the embedded default: a
character-level tokenizer built locally with the `tokenizers` library and a Llama-style model of
well under a million parameters, so the demo and the tests need no download.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from torch import Tensor
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from mirrorl.config import ModelConfig

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
# A user turn followed by a newline; the assistant's reply follows directly (no role markers).
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
)


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII, built locally (no download)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in string.printable:
        if ch not in vocab and ch not in "\r\x0b\x0c":
            vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny(spec: ModelConfig, seed: int) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A freshly initialised tiny Llama-style model of the shape `spec` gives, and its character tokenizer."""
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def load_policy(
    path: str, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer with `from_pretrained`; ValueError names the path."""
    local = Path(path)
    if local.exists() and not (local / "config.json").is_file():
        raise ValueError(f"model path {path!r} has no config.json: expected a Hugging Face model directory")
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load model {path!r}: {first_line(err)}") from err
    return model.to(device), tokenizer


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A policy's tokenizer (padding with EOS where it has no pad token); ValueError names the path."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load model {path!r}: {first_line(err)}") from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when the message is empty)."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path,
                state_dict: Mapping[str, Tensor] | None = None) -> None:
    """Write model (safetensors) and tokenizer so that `from_pretrained(path)` restores both;
    `state_dict` (e.g. gathered from shards) replaces the model's own weights."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, state_dict=None if state_dict is None else dict(state_dict))  # it empties the dict
    tokenizer.save_pretrained(path)


def pick_device(name: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on a CUDA device that supports it and fp32 elsewhere (bf16 is slow on CPU)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
