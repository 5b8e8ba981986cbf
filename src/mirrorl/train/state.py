"""What a training loop puts inside a checkpoint to resume exactly: trainer state, optimizer, RNG.

`capture_rng` returns the JSON-able state of the global generators (Python `random`, NumPy's legacy
global generator, torch CPU and every CUDA device) and of the loop's own named generators
(`random.Random`, `numpy.random.Generator`, `torch.Generator`); `restore_rng` puts it back,
matching the named generators by name (CUDA state is restored only when this process sees the same
number of devices, else a warning is logged).

`write_training_state(dir, ...)` writes, into a directory being filled (typically the `write`
callback of `mirrorl.train.checkpoint.CheckpointStore.save`):
  state.json    the loop's own trainer dict (JSON-able)
  optimizer.pt  optimizer (and LR scheduler) state dicts, read back with `torch.load(weights_only=True)`
  rng.json      what `capture_rng` returned
`read_training_state(dir, ...)` loads optimizer/scheduler state in place and returns the trainer
dict and the RNG state, which the caller restores with `restore_rng` when it is ready.

Not covered: atomicity, checksums, fsync and finding the newest valid checkpoint (that is
`mirrorl.train.checkpoint`, which never opens these files); the model weights (saved by the
caller); sharded/distributed optimizer state (each rank would need its own files).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
RNG_FILE = "rng.json"
OPTIMIZER_FILE = "optimizer.pt"

Rng = random.Random | np.random.Generator | torch.Generator


def _python_state(state: tuple) -> list:
    version, internal, gauss_next = state  # random.getstate(): (3, 625 ints, float | None)
    return [version, list(internal), gauss_next]


def _generator_state(gen: Rng) -> dict[str, Any]:
    if isinstance(gen, random.Random):
        return {"kind": "python", "state": _python_state(gen.getstate())}
    if isinstance(gen, np.random.Generator):
        return {"kind": "numpy", "state": gen.bit_generator.state}
    if isinstance(gen, torch.Generator):
        return {"kind": "torch", "state": gen.get_state().tolist()}
    raise ValueError(f"capture_rng: cannot capture a {type(gen).__name__}; "
                     "pass random.Random, numpy.random.Generator or torch.Generator")


def _set_generator_state(gen: Rng, saved: Mapping[str, Any]) -> None:
    state = saved["state"]
    if saved["kind"] == "python" and isinstance(gen, random.Random):
        gen.setstate((state[0], tuple(state[1]), state[2]))
    elif saved["kind"] == "numpy" and isinstance(gen, np.random.Generator):
        gen.bit_generator.state = state
    elif saved["kind"] == "torch" and isinstance(gen, torch.Generator):
        gen.set_state(torch.tensor(state, dtype=torch.uint8))
    else:
        raise ValueError(f"restore_rng: saved {saved['kind']} state cannot go into a {type(gen).__name__}")


def capture_rng(**generators: Rng) -> dict[str, Any]:
    """JSON-able state of the global generators (random, NumPy, torch CPU, CUDA) and of `generators`.

    Name the loop's own generators, e.g. `capture_rng(sampler=rng)`.
    """
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": _python_state(random.getstate()),
        "numpy": [keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None,
        "generators": {name: _generator_state(gen) for name, gen in generators.items()},
    }


def restore_rng(state: Mapping[str, Any], **generators: Rng) -> None:
    """Put back what `capture_rng` saved; `generators` are matched by name."""
    missing = sorted(set(generators) - set(state["generators"]))
    if missing:
        raise ValueError(f"restore_rng: no saved state for {missing}; saved: {sorted(state['generators'])}")
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    cuda = state["cuda"]
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])
    elif cuda is not None:
        log.warning("CUDA generator state for %d device(s) not restored: this process sees %d",
                    len(cuda), torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for name, gen in generators.items():
        _set_generator_state(gen, state["generators"][name])


@dataclass
class TrainingState:
    """What `read_training_state` returns; optimizer and scheduler are loaded in place."""

    trainer: dict[str, Any]
    rng: dict[str, Any] | None


def write_optimizer_state(directory: Path, optimizer: torch.optim.Optimizer,
                          scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """Write optimizer.pt: the optimizer's (and the LR scheduler's) state dicts."""
    payload = {"optimizer": optimizer.state_dict()}
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    torch.save(payload, directory / OPTIMIZER_FILE)


def read_optimizer_state(directory: Path, optimizer: torch.optim.Optimizer | None = None,
                         scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """Load what `write_optimizer_state` wrote into `optimizer` (and `scheduler`), in place."""
    if not (directory / OPTIMIZER_FILE).is_file():
        raise ValueError(f"{directory} has no {OPTIMIZER_FILE}: it was saved without optimizer state")
    payload = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])  # moves state to each parameter's device
    if scheduler is not None:
        if "scheduler" not in payload:
            raise ValueError(f"{directory / OPTIMIZER_FILE} holds no scheduler state")
        scheduler.load_state_dict(payload["scheduler"])


def write_training_state(directory: Path, trainer: Mapping[str, Any],
                         optimizer: torch.optim.Optimizer | None = None,
                         scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                         rng: Mapping[str, Any] | None = None) -> None:
    """Write state.json (`trainer`, JSON-able), optimizer.pt and rng.json (from `capture_rng`) into `directory`."""
    (directory / STATE_FILE).write_text(json.dumps(dict(trainer), indent=1), encoding="utf-8")
    if optimizer is not None:
        write_optimizer_state(directory, optimizer, scheduler)
    if rng is not None:
        (directory / RNG_FILE).write_text(json.dumps(rng), encoding="utf-8")


def read_training_state(directory: Path, optimizer: torch.optim.Optimizer | None = None,
                        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> TrainingState:
    """Load optimizer/scheduler state in place and return the trainer dict and RNG state (not yet restored)."""
    directory = Path(directory)
    trainer = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    if optimizer is not None or scheduler is not None:
        read_optimizer_state(directory, optimizer, scheduler)
    rng_file = directory / RNG_FILE
    rng = json.loads(rng_file.read_text(encoding="utf-8")) if rng_file.is_file() else None
    return TrainingState(trainer=trainer, rng=rng)
