"""Metrics: one JSONL line per step, TensorBoard scalars, optional W&B, and a live progress bar.

The JSONL file is the record of truth (plots and `summary.json` are made from it); TensorBoard
and W&B are views of the same numbers. A resumed run continues the curves from its checkpoint's
step: the JSONL keeps only the lines of earlier steps (a killed run may have logged steps after its
last checkpoint, and may have left half a line) and TensorBoard purges events from that step on,
so each step appears once.

W&B (`run.wandb`): each phase logs against its own step axis (`sft/step`, `rl/step`, declared with
`define_metric`), so the RL curves, whose steps restart at 0, are not dropped as out of order after
SFT's. A run directory records its W&B run id per phase (`wandb_run_ids.json`); a resumed phase
continues that W&B run, where the steps logged after the checkpoint by the interrupted process
appear twice (W&B cannot delete them).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, soft_wrap=True)  # one message, one line (no wrapping at 80 columns)


class MetricsLogger:
    """Append-only metrics for one phase of a run (`sft`, `rl`, ...)."""

    def __init__(self, run_dir: Path, phase: str, tensorboard: bool = True, wandb: bool = False,
                 resume_step: int | None = None) -> None:
        """Start the phase's records afresh (a new run must not continue an old run's curves), or with
        `resume_step` continue them from that step."""
        self.path = run_dir / f"{phase}_metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            keep_lines_before(self.path, resume_step)
        self.phase = phase
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            events = run_dir / "tensorboard" / phase
            if resume_step is None:
                for old in events.glob("events.out.tfevents.*"):
                    old.unlink()
            self._tb = SummaryWriter(log_dir=str(events), purge_step=resume_step)
        if wandb:
            self._wandb = open_wandb(run_dir, phase, resume=resume_step is not None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **clean}) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                self._tb.add_scalar(f"{self.phase}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{self.phase}/step": step, **{f"{self.phase}/{k}": v for k, v in clean.items()}})

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def open_wandb(run_dir: Path, phase: str, resume: bool) -> Any:
    """The W&B run of this process (the demo's phases share one), or a new one, or, for a resumed
    phase, the one it logged to before; the phase's metrics get their own step axis."""
    try:
        import wandb
    except ImportError:
        raise ValueError("run.wandb=true needs W&B: pip install 'mirrorl[wandb]'") from None
    ids_path = run_dir / "wandb_run_ids.json"
    ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    run = wandb.run
    if run is None:
        previous = ids.get(phase) if resume else None
        run = wandb.init(project="mirrorl", dir=str(run_dir), id=previous, resume="allow" if previous else None)
    ids_path.write_text(json.dumps({**ids, phase: run.id}))
    run.define_metric(f"{phase}/step")
    run.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
    return run


def keep_lines_before(path: Path, step: int) -> None:
    """Cut a metrics JSONL file down to its lines of steps before `step`, byte for byte (atomic replace).

    Stops at the first line that does not parse (the half-written last line of a killed run).
    """
    kept = []
    if path.exists():
        for line in path.read_text().splitlines(keepends=True):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if not line.endswith("\n"):
                break
            if row["step"] < step:
                kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


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
