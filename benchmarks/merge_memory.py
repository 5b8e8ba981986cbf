"""Peak memory of merging two checkpoints of a 134M-parameter Llama: the streamed merge against loading both.

Builds two randomly initialised Llama checkpoints (hidden 768, 12 layers, 12 heads, SwiGLU 2048, vocabulary 32000,
untied embeddings: 134M parameters, 536 MB in float32; the character tokenizer saved alongside, which the merge only
compares between its inputs), then merges them 0.5 / 0.5 twice, each in a fresh Python process:

  streamed  `mirrorl.long2short.merge.merge_checkpoints` with its defaults (shards of at most 500 MB: here two, of
            500 and 36 MB), checks and copying of the tokenizer files included
  naive     `safetensors.torch.load_file` of both inputs, the average of every tensor in memory, `save_file`

What the figures cover. Each child imports torch, safetensors, transformers and mirrorl, resets its peak resident
set (writes 5 to /proc/self/clear_refs; `peak_reset` false if it could not) and takes its VmRSS as the baseline,
merges, then reads VmHWM, the peak resident set. That counts anonymous memory (accumulators, the merged shard) and
the inputs' file pages that safetensors' mmap has touched: the inputs sit in the page cache, so reading them costs
no I/O, but a touched page of a live mapping is resident in the process until the mapping goes. That is why the
streamed merge opens a file per tensor (see `_load` in merge.py); `load_file` keeps every mapping for as long as
its tensors live. The written output goes through write() into the page cache, outside the resident set.

  model_bytes                     one input's model.safetensors
  peak_rss_increase_bytes         VmHWM - baseline VmRSS of the streamed merge's process
  ratio                           peak_rss_increase_bytes / model_bytes; the target is < 1.5
  seconds                         the streamed merge's wall time
  naive_*                         the same for the naive merge
  max_abs_difference              between the two merged models over all tensors (both accumulate in float32)

Usage: python benchmarks/merge_memory.py [--shard-mb 500]
Needs about 2.5 GB of disk in the temporary directory and 2 GB of memory; takes about 30 s on 2 cores.
Prints one JSON object as its last line. Measured here (2 cores): ratio 0.96 (513 MB), naive_ratio 3.05
(1.6 GB); with --shard-mb 1000, one shard holding the whole model, ratio 1.02.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.5


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(mode: str, first: Path, second: Path, out: Path, shard_mb: float) -> None:
    """Run one merge in this (fresh) process and print its memory figures as JSON."""
    import torch  # noqa: F401  (imported before the baseline, like the merge's own imports)
    from safetensors.torch import load_file, save_file

    from mirrorl.long2short.merge import SINGLE_FILE, merge_checkpoints

    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak resident set := resident set now
        peak_reset = True
    except OSError:
        peak_reset = False
    baseline_kb = status_kb("VmRSS")
    began = time.perf_counter()
    if mode == "streamed":
        merge_checkpoints([first, second], (0.5, 0.5), out, shard_mb=shard_mb)
    else:
        a, b = load_file(first / SINGLE_FILE), load_file(second / SINGLE_FILE)
        merged = {name: (0.5 * a[name].float() + 0.5 * b[name].float()).to(a[name].dtype) for name in a}
        out.mkdir()
        save_file(merged, out / SINGLE_FILE, metadata={"format": "pt"})
    seconds = time.perf_counter() - began
    print(json.dumps({"baseline_bytes": baseline_kb * 1024, "peak_rss_increase_bytes": (status_kb("VmHWM") -
                      baseline_kb) * 1024, "seconds": round(seconds, 2), "peak_reset": peak_reset}))


def build_inputs(root: Path) -> list[Path]:
    """Two random 134M-parameter Llama checkpoints with the character tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mirrorl.models import build_char_tokenizer

    config = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
                         tie_word_embeddings=False)
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        paths.append(root / f"seed{seed}")
        model.save_pretrained(paths[-1])
        build_char_tokenizer().save_pretrained(paths[-1])
        del model
    return paths


def run_child(mode: str, first: Path, second: Path, out: Path, shard_mb: float) -> dict:
    command = [sys.executable, __file__, "--child", mode, str(first), str(second), str(out), "--shard-mb",
               str(shard_mb)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {mode} merge failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_abs_difference(a: Path, b: Path) -> float:
    """Largest element-wise difference between two merged models (sharded or not), one tensor at a time."""
    from safetensors import safe_open

    def files_by_name(path: Path) -> dict[str, Path]:
        found = {}
        for file in path.glob("*.safetensors"):
            with safe_open(file, framework="pt") as handle:
                found.update(dict.fromkeys(handle.keys(), file))
        return found

    def tensor(file: Path, name: str):
        with safe_open(file, framework="pt") as handle:
            return handle.get_tensor(name).double()

    files_a, files_b = files_by_name(a), files_by_name(b)
    assert files_a.keys() == files_b.keys(), "the two merges wrote different tensors"
    return max(float((tensor(files_a[n], n) - tensor(files_b[n], n)).abs().max()) for n in files_a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-mb", type=float, default=500.0, help="the streamed merge's shard size (MB)")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "FIRST", "SECOND", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, *paths = args.child
        child(mode, *map(Path, paths), shard_mb=args.shard_mb)
        return
    with tempfile.TemporaryDirectory() as scratch:
        first, second = build_inputs(Path(scratch))
        model_bytes = sum(file.stat().st_size for file in first.glob("*.safetensors"))
        streamed = run_child("streamed", first, second, Path(scratch) / "streamed", args.shard_mb)
        naive = run_child("naive", first, second, Path(scratch) / "naive", args.shard_mb)
        difference = max_abs_difference(Path(scratch) / "streamed", Path(scratch) / "naive")
    ratio, naive_ratio = (run["peak_rss_increase_bytes"] / model_bytes for run in (streamed, naive))
    print(f"one model: {model_bytes / 1e6:.0f} MB; peak RSS increase: streamed "
          f"{streamed['peak_rss_increase_bytes'] / 1e6:.0f} MB ({ratio:.2f}x, {streamed['seconds']} s), naive "
          f"{naive['peak_rss_increase_bytes'] / 1e6:.0f} MB ({naive_ratio:.2f}x, {naive['seconds']} s)")
    print(json.dumps({
        "benchmark": "merge_memory", "model_bytes": model_bytes, "shard_mb": args.shard_mb,
        "peak_rss_increase_bytes": streamed["peak_rss_increase_bytes"], "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO, "passed": ratio < TARGET_RATIO, "seconds": streamed["seconds"],
        "naive_peak_rss_increase_bytes": naive["peak_rss_increase_bytes"], "naive_ratio": round(naive_ratio, 3),
        "naive_seconds": naive["seconds"], "max_abs_difference": difference,
        "peak_reset": streamed["peak_reset"] and naive["peak_reset"],
    }))


if __name__ == "__main__":
    main()
