"""Learning curves of a run as one PNG: SFT loss, RL accuracy and reward, response length, KL.

Made from the run's metrics JSONL files (the record of truth), so it can be redrawn any time
with `mirrorl plot RUN_DIR`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mirrorl.train.metrics import read_metrics  # noqa: E402


def _smooth(values: list[float], window: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def _curve(ax, rows: list[dict], key: str, label: str) -> None:
    points = [(r["step"], r[key]) for r in rows if key in r]
    if points:
        steps, values = zip(*points)
        (line,) = ax.plot(steps, _smooth(list(values)), label=label)
        ax.plot(steps, values, alpha=0.3, color=line.get_color())


def plot_run(run_dir: Path, summary: dict | None = None) -> Path:
    """Draw `curves.png` in `run_dir` and return its path."""
    sft, rl = read_metrics(run_dir / "sft_metrics.jsonl"), read_metrics(run_dir / "rl_metrics.jsonl")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [
        (axes[0, 0], sft, [("loss", "SFT loss")], "SFT step", "long-CoT SFT"),
        (axes[0, 1], rl, [("accuracy", "train accuracy"), ("reward", "reward")], "RL iteration", "RL reward"),
        (axes[1, 0], rl, [("response_tokens", "mean response tokens")], "RL iteration", "response length"),
        (axes[1, 1], rl, [("kl", "KL(pi_i || pi_theta)"), ("entropy", "entropy")], "RL iteration", "policy change"),
    ]
    for ax, rows, keys, xlabel, title in panels:
        for key, label in keys:
            _curve(ax, rows, key, label)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=8)
    if summary:
        axes[0, 1].axhline(summary["sft_accuracy"], color="gray", ls="--", lw=1)
        axes[0, 1].axhline(summary["rl_accuracy"], color="black", ls="--", lw=1)
        fig.suptitle(f"held-out pass@1: SFT {summary['sft_accuracy']:.2f} -> RL {summary['rl_accuracy']:.2f} "
                     f"(dashed); mean tokens {summary['sft_mean_tokens']:.0f} -> {summary['rl_mean_tokens']:.0f}")
    fig.tight_layout()
    path = run_dir / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_long2short(rows: list[dict], path: Path) -> Path:
    """The long2short comparison as in the k1.5 report's Figure 7: mean response tokens (x) against
    held-out pass@1 (y), one labelled marker per method; written to `path`."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = "o^sDvP*X"
    for index, row in enumerate(rows):
        ax.scatter(row["tokens"], row["pass1"], s=70, marker=markers[index % len(markers)], label=row["method"])
        ax.annotate(row["method"], (row["tokens"], row["pass1"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=9)
    ax.set_xlabel("mean response tokens (held-out)")
    ax.set_ylabel("pass@1 (held-out)")
    ax.set_title("long2short: accuracy against length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
