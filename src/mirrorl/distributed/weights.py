"""Weights as a few large byte buffers: what a weight sync moves, and the digest that checks it.

A sync that sends each parameter in its own call pays a round trip per tensor (hundreds for an
LLM). Here a state dict becomes one small list of `Slot`s (name, dtype, shape, where its bytes
are) and a few `bucket_bytes`-sized uint8 buffers: NumPy arrays, which Ray's object store shares
between the processes of a machine without copying. Any dtype (bf16 included) travels as raw bytes.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Slot:
    name: str
    dtype: str  # torch dtype name, e.g. "float32"
    shape: tuple[int, ...]
    bucket: int
    offset: int  # bytes into the bucket
    nbytes: int


def pack(state: Mapping[str, Tensor], bucket_bytes: int) -> tuple[list[Slot], list[np.ndarray]]:
    """The tensors of `state`, in order, laid end to end in buffers of at most `bucket_bytes`
    (a tensor larger than that gets a buffer of its own)."""
    slots: list[Slot] = []
    sizes: list[int] = []
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if not sizes or (sizes[-1] and sizes[-1] + nbytes > bucket_bytes):
            sizes.append(0)
        slots.append(Slot(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), len(sizes) - 1,
                          sizes[-1], nbytes))
        sizes[-1] += nbytes
    buckets = [np.empty(size, dtype=np.uint8) for size in sizes]
    for slot, tensor in zip(slots, state.values()):
        raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        buckets[slot.bucket][slot.offset : slot.offset + slot.nbytes] = raw.numpy()
    return slots, buckets


def unpack(slots: list[Slot], buckets: list[np.ndarray]) -> dict[str, Tensor]:
    """The state dict `pack` laid out, as tensors viewing the buffers (no copy). Buffers from the
    object store are read-only: copy the tensors in (`load_state_dict`), never write to them."""
    state = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for slot in slots:
            raw = torch.from_numpy(buckets[slot.bucket][slot.offset : slot.offset + slot.nbytes])
            state[slot.name] = raw.view(getattr(torch, slot.dtype)).reshape(slot.shape)
    return state


def digest(state: Mapping[str, Tensor]) -> str:
    """blake2b over the names and bytes of `state`'s tensors, in order: equal iff the weights are."""
    hasher = hashlib.blake2b(digest_size=16)
    for name, tensor in state.items():
        hasher.update(name.encode())
        hasher.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()
