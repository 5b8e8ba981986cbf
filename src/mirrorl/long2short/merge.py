"""Checkpoint merging, long2short's first method (Kimi k1.5 report sec. 2.4, "model merging").

The report merges "a long-cot model and a shortcot model to obtain a new one ... by simply averaging their
weights". `merge_checkpoints` computes theta = sum_i w_i * theta_i, tensor by tensor, over n >= 2 Hugging Face
checkpoint directories with weights that sum to 1; `merge_sweep` does it for several weights alpha of the first of
two models (alpha * long + (1 - alpha) * short), the knob the report leaves open.

Streamed, so that merging needs about one model's worth of memory, not n + 1 of them: each input tensor is read
on its own (its file opened with `safe_open` and closed again: the tensor is a view of the file's private mmap, and
the pages it touched leave the process's resident set only when that mapping goes), accumulated in float32
(float64 for float64 tensors) and cast back to its dtype. The output is written in shards of at most `shard_mb`
decimal MB (Hugging Face's unit), each saved and dropped before the next is computed; the peak is about one shard
plus two copies of the largest tensor (benchmarks/merge_memory.py measures it). Integer and bool tensors (buffers)
must be equal in every input and are copied.

Refused, with a one-line ValueError naming the two directories and what differs: a path that is not a model
directory (config.json and safetensors weights), a different `model_type` or `architectures`, different tensor
names, shapes or dtypes, and different tokenizers. Tokenizers are compared by what they do rather than by their
files (which differ in formatting between library versions): both are loaded with `AutoTokenizer` and their
vocabularies (added tokens included) and special tokens must match. The chat template is not compared.

The output holds the merged weights, then every other top-level file of the first model (config.json,
generation_config.json, tokenizer files, custom code; not its weights, weight indexes or subdirectories). It is
written to a sibling directory and renamed into place at the end, so a failure never leaves a half-written model.

Not covered: other merge rules (task arithmetic, TIES, SLERP), models with different vocabularies (no token
remapping), pickle (.bin) checkpoints, and evaluating the merged model (the Figure 7 comparison does that).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformers import AutoTokenizer

from mirrorl.models import first_line

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")  # never copied
MB = 10**6
SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class TensorSpec:
    """Where one tensor is stored and what it is, from its file's safetensors header."""

    file: Path
    dtype: str  # safetensors code: "F32", "BF16", "I64", ...
    shape: tuple[int, ...]
    nbytes: int
    offset: int  # start of its bytes in the file's data section


@dataclass(frozen=True)
class MergeResult:
    out: Path  # the merged model's directory
    num_tensors: int
    num_parameters: int  # elements over all tensors, buffers included
    bytes_written: int  # the merged .safetensors files, headers included
    seconds: float  # wall time, checks included


def merge_checkpoints(paths: Sequence[Path], weights: Sequence[float], out: Path, *, shard_mb: float = 500.0,
                      overwrite: bool = False) -> MergeResult:
    """Write sum_i weights[i] * paths[i] to `out`, a Hugging Face model directory; ValueError for a refused merge."""
    began = time.perf_counter()
    paths, out = [Path(p) for p in paths], Path(out)
    _check_weights(paths, weights)
    if not shard_mb > 0:
        raise ValueError(f"merge shard_mb={shard_mb} must be > 0 (MB per output file)")
    specs = [_tensor_specs(path) for path in paths]  # [n] name -> spec
    for path, spec in zip(paths[1:], specs[1:]):
        _check_same_model(paths[0], specs[0], path, spec)
    _check_out(paths, out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        shards = _plan_shards(specs[0], shard_mb * MB)
        bytes_written = _write_weights(shards, paths, specs, [float(w) for w in weights], staging)
        for file in sorted(paths[0].iterdir()):
            if file.is_file() and not _is_weights(file.name):
                shutil.copy2(file, staging / file.name)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return MergeResult(out=out, num_tensors=len(specs[0]), num_parameters=sum(math.prod(s.shape) for s in
                       specs[0].values()), bytes_written=bytes_written, seconds=time.perf_counter() - began)


def merge_sweep(paths: Sequence[Path], first_weights: Sequence[float], out: Path, *, shard_mb: float = 500.0,
                overwrite: bool = False) -> list[MergeResult]:
    """alpha * paths[0] + (1 - alpha) * paths[1] for each alpha of `first_weights`, into `out/alpha_{alpha}/`."""
    if len(paths) != 2:
        raise ValueError(f"merge_sweep takes 2 checkpoints (long-CoT, short-CoT), got {len(paths)}")
    if bad := [alpha for alpha in first_weights if not math.isfinite(alpha)]:
        raise ValueError(f"merge_sweep first_weights must be finite numbers, got {bad}")
    return [merge_checkpoints(paths, (alpha, 1.0 - alpha), Path(out) / f"alpha_{alpha:g}", shard_mb=shard_mb,
                              overwrite=overwrite) for alpha in first_weights]


# Checks: each refusal is one line that names the directories.


def _check_weights(paths: list[Path], weights: Sequence[float]) -> None:
    if len(paths) < 2:
        raise ValueError(f"merge needs at least 2 checkpoints, got {len(paths)}")
    if len(weights) != len(paths):
        raise ValueError(f"merge got {len(weights)} weights for {len(paths)} checkpoints: give one per checkpoint")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"merge weights must be finite numbers, got {list(weights)}")
    if abs(math.fsum(weights) - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"merge weights {list(weights)} sum to {math.fsum(weights):.9g}: a weighted average needs "
                         f"weights that sum to 1 (within {SUM_TOLERANCE:g})")


def _tensor_specs(path: Path) -> dict[str, TensorSpec]:
    """Every tensor of a model directory, read from the safetensors headers (no tensor data is read)."""
    if not path.is_dir():
        raise ValueError(f"cannot merge {path}: not a directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"cannot merge {path}: no config.json, expected a Hugging Face model directory")
    if (path / INDEX_FILE).is_file():
        files = sorted({path / name for name in json.loads((path / INDEX_FILE).read_text())["weight_map"].values()})
    elif (path / SINGLE_FILE).is_file():
        files = [path / SINGLE_FILE]
    else:
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"cannot merge {path}: no {SINGLE_FILE} or {INDEX_FILE}, and {len(files)} other "
                             f".safetensors files (expected exactly one)")
    specs = {}
    for file in files:
        specs.update(_file_specs(file))
    return specs


def _file_specs(file: Path) -> dict[str, TensorSpec]:
    """A .safetensors header: 8 bytes of little-endian length, then JSON {name: {dtype, shape, data_offsets}}."""
    try:
        with open(file, "rb") as stream:
            (length,) = struct.unpack("<Q", stream.read(8))
            header = json.loads(stream.read(length))
    except (OSError, struct.error, ValueError) as err:
        raise ValueError(f"cannot merge {file.parent}: cannot read the safetensors file {file.name}: "
                         f"{first_line(err)}") from err
    header.pop("__metadata__", None)
    return {name: TensorSpec(file, entry["dtype"], tuple(entry["shape"]), entry["data_offsets"][1] -
                             entry["data_offsets"][0], entry["data_offsets"][0]) for name, entry in header.items()}


def _check_same_model(a: Path, specs_a: dict[str, TensorSpec], b: Path, specs_b: dict[str, TensorSpec]) -> None:
    """Refuse two checkpoints that are not the same architecture with the same tokenizer."""
    config_a, config_b = (json.loads((p / "config.json").read_text()) for p in (a, b))
    for key in ("model_type", "architectures"):
        if config_a.get(key) != config_b.get(key):
            raise ValueError(f"cannot merge {a} and {b}: config.json {key} differs ({config_a.get(key)} vs "
                             f"{config_b.get(key)})")
    if only_a := sorted(specs_a.keys() - specs_b.keys()):
        raise ValueError(f"cannot merge {a} and {b}: {len(only_a)} tensors only in the first, e.g. {only_a[0]}")
    if only_b := sorted(specs_b.keys() - specs_a.keys()):
        raise ValueError(f"cannot merge {a} and {b}: {len(only_b)} tensors only in the second, e.g. {only_b[0]}")
    for name, spec in specs_a.items():
        other = specs_b[name]
        if (spec.shape, spec.dtype) != (other.shape, other.dtype):
            raise ValueError(f"cannot merge {a} and {b}: tensor {name} has shape {list(spec.shape)} {spec.dtype} vs "
                             f"{list(other.shape)} {other.dtype}")
    _check_same_tokenizer(a, b)


def _check_same_tokenizer(a: Path, b: Path) -> None:
    tokenizers = []
    for path in (a, b):
        try:
            tokenizers.append(AutoTokenizer.from_pretrained(str(path)))
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"cannot merge {path}: cannot load its tokenizer: {first_line(err)}") from err
    vocab_a, vocab_b = (t.get_vocab() for t in tokenizers)
    if vocab_a != vocab_b:
        token, _ = min(vocab_a.items() ^ vocab_b.items())
        raise ValueError(f"cannot merge {a} and {b}: the tokenizers' vocabularies differ ({len(vocab_a)} vs "
                         f"{len(vocab_b)} tokens; e.g. {token!r})")
    special_a, special_b = (t.special_tokens_map for t in tokenizers)
    if special_a != special_b:
        raise ValueError(f"cannot merge {a} and {b}: the tokenizers' special tokens differ ({special_a} vs "
                         f"{special_b})")


def _check_out(paths: list[Path], out: Path, overwrite: bool) -> None:
    if out.resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"merge output {out} is one of the inputs: choose another directory")
    if out.exists() and not out.is_dir():
        raise ValueError(f"merge output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"merge output {out} exists and is not empty: choose another directory or pass overwrite")


# Writing.


def _plan_shards(specs: dict[str, TensorSpec], limit_bytes: float) -> list[list[str]]:
    """Tensor names in the first model's storage order, cut into shards of at most `limit_bytes` each (a larger
    tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(specs, key=lambda n: (specs[n].file, specs[n].offset)):
        if shards[-1] and size + specs[name].nbytes > limit_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += specs[name].nbytes
    return shards


def _write_weights(shards: list[list[str]], paths: list[Path], specs: list[dict[str, TensorSpec]],
                   weights: list[float], staging: Path) -> int:
    """Merge and save shard after shard; the index when there is more than one. Returns the bytes written."""
    files = [SINGLE_FILE] if len(shards) == 1 else [f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                                                     for i in range(1, len(shards) + 1)]
    weight_map = {}
    for file, names in zip(files, shards):
        tensors = {name: _merge_tensor(name, paths, specs, weights) for name in names}
        save_file(tensors, staging / file, metadata={"format": "pt"})
        del tensors  # flushed: the next shard starts from nothing
        weight_map.update(dict.fromkeys(names, file))
    if len(files) > 1:
        index = {"metadata": {"total_size": sum(spec.nbytes for spec in specs[0].values())}, "weight_map": weight_map}
        (staging / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return sum((staging / file).stat().st_size for file in files)


def _load(spec: TensorSpec, name: str) -> Tensor:
    """One tensor, its file opened for it alone: the tensor is a view of the file's private mmap, so the pages it
    touches stay resident until the last view of that mapping is gone, and a handle kept open for the whole merge
    would end up holding every input in the process's resident set."""
    with safe_open(spec.file, framework="pt") as handle:
        return handle.get_tensor(name)


def _merge_tensor(name: str, paths: list[Path], specs: list[dict[str, TensorSpec]], weights: list[float]) -> Tensor:
    """sum_i weights[i] * tensor_i in float32 (float64 for float64), cast back; integer and bool tensors copied."""
    first = _load(specs[0][name], name)
    if not first.is_floating_point():
        for path, spec in zip(paths[1:], specs[1:]):
            if not torch.equal(first, _load(spec[name], name)):
                raise ValueError(f"cannot merge {paths[0]} and {path}: {first.dtype} tensor {name} differs, and "
                                 f"integer and bool tensors are copied, not averaged")
        return first.clone()
    dtype = first.dtype
    accumulator = first.to(torch.float64 if dtype == torch.float64 else torch.float32, copy=True).mul_(weights[0])
    del first  # its mapping goes with it
    for spec, weight in zip(specs[1:], weights[1:]):
        accumulator.add_(_load(spec[name], name).to(accumulator.dtype), alpha=weight)
    return accumulator.to(dtype)


def _is_weights(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json")


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished directory to `out`; an existing (empty, or overwritten) `out` is moved aside first."""
    if not out.exists():
        staging.rename(out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old)
