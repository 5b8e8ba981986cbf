"""`mirrorl long2short` end to end on a tiny model: every method runs, and the table, plot and
rows land in the run directory."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mirrorl.cli import app
from mirrorl.config import load_config
from mirrorl.recipes import run_sft

TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "run.tensorboard=false", "run.num_threads=1", "data.num_sft=256", "data.num_rl=16", "data.num_eval=6"]


@pytest.mark.slow
def test_every_method_gives_a_row(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "train"))  # toy_rewards
    # a "long" model that ends its responses: a short SFT of the tiny model on the long traces, as RUN_DIR/rl/final
    trained = run_sft(load_config(None, [*TINY, f"run.output_dir={tmp_path / 'sft'}", "sft.steps=300",
                                         "sft.batch_size=16"]))
    run = tmp_path / "run"
    shutil.copytree(trained, run / "rl" / "final")
    overrides = [*TINY, "rl.reward=toy_rewards:varied", "eval.num_samples=2", "rollout.max_new_tokens=40",
                 "long2short.short_sft_steps=2", "long2short.rs_sft_steps=2", "rejection.num_problems=16",
                 "rejection.num_samples=4", "dpo.num_problems=16", "dpo.num_samples=4", "dpo.steps=2",
                 "dpo.longer_ratio=1.0", "rl.iterations=2", "rl.problems_per_iteration=2", "algo.num_samples=2"]
    result = CliRunner().invoke(app, ["long2short", str(run), *overrides])
    assert result.exit_code == 0, result.output
    rows = json.loads((run / "long2short.json").read_text())
    assert [row["method"] for row in rows] == ["long", "short", "merge", "merge_rs", "dpo", "rl"]
    for row in rows:
        assert 0 <= row["pass1"] <= 1 and row["tokens"] > 0 and row["seconds"] >= 0 and "pass@2" in row
        assert (run / "long2short" / row["method"] / f"eval_{row['method']}_samples.jsonl").is_file()
    table = (run / "long2short.md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith("| long | ")
    assert (run / "long2short.png").stat().st_size > 10_000
    assert (run / "long2short" / "merge" / "model" / "model.safetensors").is_file()
