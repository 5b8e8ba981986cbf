"""Weights as a few large byte buffers: what a weight sync moves, and the digest that checks it.

A sync that sends each parameter in its own call pays a round trip per tensor (hundreds for an
LLM). Here a state dict becomes one small list of `Slot`s (name, dtype, shape, where its bytes
are) and a few `bucket_bytes`-sized uint8 buffers: NumPy arrays, which Ray's object store shares
between the processes of a machine without copying. Any dtype (bf16 included) travels as raw bytes.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

ALIGN = 16  # bytes: every tensor starts at a multiple of this in its buffer


@dataclass(frozen=True)
class Slot:
    name: str
    dtype: str  # torch dtype name, e.g. "float32"
    shape: tuple[int, ...]
    bucket: int
    offset: int  # bytes into the bucket
    nbytes: int


def layout(state: Mapping[str, Tensor], bucket_bytes: int) -> list[Slot]:
    """Where `pack` puts each tensor of `state`: in order, each at an offset aligned to `ALIGN`
    bytes (so a tensor can view its bytes in place), in buffers of at most `bucket_bytes` (a tensor
    larger than that gets a buffer of its own)."""
    slots: list[Slot] = []
    bucket, size = 0, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        offset = size + -size % ALIGN
        if size and offset + nbytes > bucket_bytes:
            bucket, offset = bucket + 1, 0
        slots.append(Slot(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), bucket, offset, nbytes))
        size = offset + nbytes
    return slots


def bucket_sizes(slots: list[Slot]) -> list[int]:
    """The byte size of each buffer of a layout."""
    sizes = [0] * (slots[-1].bucket + 1) if slots else []
    for slot in slots:
        sizes[slot.bucket] = slot.offset + slot.nbytes
    return sizes


def pack(state: Mapping[str, Tensor], bucket_bytes: int) -> tuple[list[Slot], list[np.ndarray]]:
    """The tensors of `state` as raw bytes in the buffers of `layout(state, bucket_bytes)`."""
    slots = layout(state, bucket_bytes)
    buckets = [np.empty(size, dtype=np.uint8) for size in bucket_sizes(slots)]
    for slot, tensor in zip(slots, state.values()):
        raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        buckets[slot.bucket][slot.offset : slot.offset + slot.nbytes] = raw.numpy()
    return slots, buckets


def unpack(slots: list[Slot], buckets: Sequence[np.ndarray | Tensor]) -> dict[str, Tensor]:
    """The state dict `pack` laid out, as tensors viewing the buffers (no copy). Buffers from the
    object store are read-only: copy the tensors in (`load_state_dict`), never write to them."""
    state = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = [bucket if isinstance(bucket, Tensor) else torch.from_numpy(bucket) for bucket in buckets]
        for slot in slots:
            raw = tensors[slot.bucket][slot.offset : slot.offset + slot.nbytes]
            state[slot.name] = raw.view(getattr(torch, slot.dtype)).reshape(slot.shape)
    return state


def digest(state: Mapping[str, Tensor]) -> str:
    """blake2b over the names and bytes of `state`'s tensors, in order: equal iff the weights are."""
    hasher = hashlib.blake2b(digest_size=16)
    for name, tensor in state.items():
        hasher.update(name.encode())
        hasher.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()
