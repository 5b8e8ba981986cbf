"""Resuming a training phase (sft, rl) exactly, and stopping one cleanly.

A phase keeps its checkpoints in `<run>/checkpoints/<phase>` (the crash-safe store of
`checkpoint.py`) and exports its policy to `<run>/<phase>/final`. A checkpoint at step s is the
state at the start of step s (s steps or iterations done):

  model/         the policy and tokenizer in Hugging Face format (`from_pretrained` reads it alone)
  optimizer.pt   optimizer (and LR scheduler) state
  rng.json       Python, NumPy, torch and CUDA generator states and the loop's own generators
  state.json     the loop's own state: step, data cursor, sampler, replay buffer, ...

How a command treats what the run directory already holds for its phase (`Start`):
  new        refuse when the phase has a checkpoint, an export or metrics: nothing is overwritten
             without being asked, and the error names the two ways on;
  resume     continue from the newest checkpoint that verifies (an error when there is none);
  overwrite  delete the phase's checkpoints and export (its curves restart), then start afresh.
A resumed run must keep the settings its saved state depends on (`check_settings`); other changes
(more iterations, another learning rate) are allowed and listed in one line.

Stopping: inside `Checkpointing.signals()` the first SIGINT or SIGTERM only sets a flag; the loop
finishes its current step, writes a checkpoint at the next step boundary and raises
`TrainingStopped`, which the CLI prints as one line with the resume command. A second signal stops
at once (KeyboardInterrupt), leaving the newest checkpoint as it was.

Not covered: resuming a W&B run (a resumed run starts a new W&B run), several processes per run.
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mirrorl.models import save_policy
from mirrorl.train.checkpoint import Checkpoint, CheckpointStore, find_latest
from mirrorl.train.metrics import console
from mirrorl.train.state import write_optimizer_state, write_training_state

Start = Literal["new", "resume", "overwrite"]
MODEL_DIR = "model"  # inside a checkpoint


class TrainingStopped(RuntimeError):
    """A run stopped on purpose after writing a checkpoint; the message says why and where it is."""

    def __init__(self, message: str, checkpoint: Path, exit_code: int) -> None:
        super().__init__(message)
        self.checkpoint, self.exit_code = checkpoint, exit_code


def checkpoint_root(run_dir: Path, phase: str) -> Path:
    return run_dir / "checkpoints" / phase


def _refusal(run_dir: Path, phase: str) -> str | None:
    """Why a new `phase` run may not start in `run_dir` (what it already holds, and the ways on); None if it may."""
    both = "pass --resume to continue it or --overwrite to start afresh"
    latest = find_latest(checkpoint_root(run_dir, phase), checksums=False)
    metrics = run_dir / f"{phase}_metrics.jsonl"
    if (run_dir / phase / "final").exists():
        return f"{run_dir} already holds a finished {phase} run ({run_dir / phase / 'final'}): {both}"
    if latest is not None:
        return f"{run_dir} already holds an unfinished {phase} run (checkpoint {latest.path}): {both}"
    if metrics.is_file() and metrics.stat().st_size > 0:
        return (f"{run_dir} already holds the metrics of an earlier {phase} run that left no checkpoint ({metrics}): "
                "pass --overwrite to start afresh")
    return None


def open_phase(run_dir: Path, phase: str, start: Start) -> Checkpoint | None:
    """Apply the start rule without changing anything: the checkpoint to resume from, or None to start afresh."""
    if start == "resume":
        root = checkpoint_root(run_dir, phase)
        found = find_latest(root)
        if found is None:
            raise ValueError(f"nothing to resume: no valid {phase} checkpoint in {root}; run without --resume "
                             "to start afresh")
        return found
    refusal = _refusal(run_dir, phase) if start == "new" else None
    if refusal is not None:
        raise ValueError(refusal)
    return None


def clear_phase(run_dir: Path, phase: str) -> None:
    """--overwrite: remove the phase's checkpoints and export (the metrics logger restarts its curves)."""
    for path in (checkpoint_root(run_dir, phase), run_dir / phase / "final"):
        if path.exists():
            shutil.rmtree(path)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def check_settings(saved: dict[str, Any] | None, current: dict[str, Any], fixed: tuple[str, ...],
                   checkpoint: Path) -> list[str]:
    """Settings changed since `checkpoint` was written, as 'key: old -> new'.

    ValueError when one of them is under a `fixed` prefix: the saved state (data cursor, replay
    buffer, batch order) would not mean the same thing with the new value.
    """
    old, new = _flatten(saved or {}), _flatten(current)
    changed = [key for key in new if key in old and old[key] != new[key]]
    for key in changed:
        if any(key == f or key.startswith(f + ".") for f in fixed):
            raise ValueError(f"cannot resume from {checkpoint}: it was written with {key}={old[key]!r}, now "
                             f"{new[key]!r}; resume with the same value or start afresh with --overwrite")
    return [f"{key}: {old[key]!r} -> {new[key]!r}" for key in changed]


@dataclass
class Checkpointing:
    """What a training loop needs to save and resume: the store, when to save, where to resume from."""

    store: CheckpointStore | None  # None: no checkpoints and no signal handling (`Checkpointing.off()`)
    tokenizer: PreTrainedTokenizerBase | None  # saved beside the weights
    config: dict[str, Any] | None  # recorded in every manifest
    every: int  # steps between checkpoints; 0: only at the end (and when stopped)
    resume: Checkpoint | None  # where to continue from; None starts afresh
    signum: int | None = field(default=None, init=False)  # the stop signal received, if any

    @classmethod
    def off(cls) -> Checkpointing:
        """For a loop run without a run directory (benchmarks, tests): never saves, never resumes."""
        return cls(store=None, tokenizer=None, config=None, every=0, resume=None)

    def save(self, step: int, model: PreTrainedModel, optimizer: torch.optim.Optimizer, trainer: dict[str, Any],
             rng: dict[str, Any], scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> Path | None:
        """Write checkpoint `step`: the live weights and optimizer, and the loop's `trainer` and `rng` state."""

        def write_weights(directory: Path) -> None:
            save_policy(model, self.tokenizer, directory / MODEL_DIR)
            write_optimizer_state(directory, optimizer, scheduler)

        return self.save_with(step, write_weights, trainer, rng)

    def save_with(self, step: int, write_weights: Callable[[Path], None], trainer: dict[str, Any],
                  rng: dict[str, Any]) -> Path | None:
        """Write checkpoint `step`: `write_weights(directory)` writes the policy and optimizer (a
        `Trainer.save`), then the loop's `trainer` and `rng` state."""
        if self.store is None:
            return None

        def write(directory: Path) -> None:
            write_weights(directory)
            write_training_state(directory, trainer, rng=rng)

        return self.store.save(step, write, self.config)

    def boundary(self, step: int, first: int, phase: str, save: Callable[[], Path | None]) -> None:
        """At the start of `step`: checkpoint when due; after a stop signal, checkpoint and raise TrainingStopped.

        `first` is the step this process started at (its checkpoint exists already); `save()` writes
        the state at this boundary and returns its directory.
        """
        if self.store is None:
            return
        if self.signum is not None:
            path = save()
            name = signal.Signals(self.signum).name
            raise TrainingStopped(f"{phase} stopped by {name} at step {step}; checkpoint saved in {path}", path,
                                  128 + self.signum)
        if step > first and self._due(step):
            save()

    def _due(self, step: int) -> bool:
        """Whether `step` is one of the every-N checkpoint steps."""
        return bool(self.every) and step % self.every == 0

    def quiet(self, step: int) -> bool:
        """Whether the boundary of `step` will write nothing (no checkpoint due, no stop asked for), so
        an iteration may run into it with work in flight."""
        return self.store is None or (self.signum is None and not self._due(step))

    @contextmanager
    def signals(self) -> Iterator[None]:
        """Turn the first SIGINT/SIGTERM into a stop at the next step boundary (main thread only)."""
        if self.store is None or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: Any) -> None:
            if self.signum is not None:
                raise KeyboardInterrupt  # a second signal: stop at once
            self.signum = signum
            console.print(f"{signal.Signals(signum).name}: finishing this step, then writing a checkpoint "
                          "(send it again to stop at once)")

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
