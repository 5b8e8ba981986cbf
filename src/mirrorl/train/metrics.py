"""Metrics: one JSONL line per step, TensorBoard scalars, optional W&B, and a live progress bar.

The JSONL file is the record of truth (plots and `summary.json` are made from it); TensorBoard
and W&B are views of the same numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class MetricsLogger:
    """Append-only metrics for one phase of a run (`sft`, `rl`, ...)."""

    def __init__(self, run_dir: Path, phase: str, tensorboard: bool = True, wandb: bool = False) -> None:
        """Start the phase's records afresh: a new run must not continue an old run's curves."""
        self.path = run_dir / f"{phase}_metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self.phase = phase
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            events = run_dir / "tensorboard" / phase
            for old in events.glob("events.out.tfevents.*"):
                old.unlink()
            self._tb = SummaryWriter(log_dir=str(events))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise ValueError("run.wandb=true needs W&B: pip install 'mirrorl[wandb]'") from None
            self._wandb = wandb_module.run or wandb_module.init(project="mirrorl", dir=str(run_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **clean}) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                self._tb.add_scalar(f"{self.phase}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{self.phase}/{k}": v for k, v in clean.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All lines of a metrics JSONL file (empty when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress_bar() -> Progress:
    """A rich progress bar with a free-text field for the latest metrics."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
