"""End to end on a toy budget: the demo's run directory, SFT learning, RL iteration metrics, CLI errors."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mirrorl.cli import app
from mirrorl.config import load_config
from mirrorl.recipes import run_demo, run_sft

TOY = [
    "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
    "data.num_sft=64", "data.num_rl=32", "data.num_eval=8", "sft.steps=3", "sft.batch_size=16",
    "rl.iterations=2", "rl.problems_per_iteration=4", "algo.num_samples=2", "rollout.max_new_tokens=24",
    "eval.num_samples=2", "run.tensorboard=true",
]


def test_demo_writes_the_promised_run_directory(tmp_path: Path):
    summary = run_demo(load_config(None, [*TOY, f"run.output_dir={tmp_path}"]))
    for key in ("sft_accuracy", "rl_accuracy", "sft_mean_tokens", "rl_mean_tokens", "wall_seconds"):
        assert key in summary
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert 0 < summary["sft_mean_tokens"] <= 24 and 0 < summary["rl_mean_tokens"] <= 24
    for name in ("curves.png", "config.yaml", "sft/final/config.json", "rl/final/model.safetensors",
                 "eval_sft.json", "eval_rl.json"):
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "tensorboard" / "rl").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (tmp_path / "rl_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    for key in ("reward", "accuracy", "response_tokens", "kl", "entropy", "rollout_tokens_per_second",
                "time_rollout", "time_reward", "time_optimize", "reward_errors"):
        assert key in rows[0], key
    assert (tmp_path / "checkpoints" / "sft" / "latest").read_text() == "step-000003\n"
    assert (tmp_path / "checkpoints" / "rl" / "latest").read_text() == "step-000002\n"


def test_demo_resume_of_a_finished_run_trains_nothing_and_overwrite_starts_afresh(tmp_path: Path, capsys):
    cfg = load_config(None, [*TOY, f"run.output_dir={tmp_path}", "sft.steps=2", "rl.iterations=1"])
    run_demo(cfg)
    metrics = {phase: (tmp_path / f"{phase}_metrics.jsonl").read_text() for phase in ("sft", "rl")}
    weights = (tmp_path / "rl" / "final" / "model.safetensors").read_bytes()
    capsys.readouterr()
    run_demo(cfg, "resume")
    err = capsys.readouterr().err
    assert "sft: 0 steps" in err and "rl: 0 iterations" in err
    assert {phase: (tmp_path / f"{phase}_metrics.jsonl").read_text() for phase in ("sft", "rl")} == metrics
    assert (tmp_path / "rl" / "final" / "model.safetensors").read_bytes() == weights
    run_demo(load_config(None, [*TOY, f"run.output_dir={tmp_path}", "sft.steps=1", "rl.iterations=1"]), "overwrite")
    assert len((tmp_path / "sft_metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "sft").iterdir()) == ["latest", "step-000001"]


def test_sft_lowers_the_loss(tmp_path: Path):
    cfg = load_config(None, [*TOY, f"run.output_dir={tmp_path}", "sft.steps=30", "sft.lr=3e-3"])
    run_sft(cfg)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sft_metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 30 and losses[-1] < 0.8 * losses[0]  # measured: 4.62 -> 3.28


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rl", "algo.tau=abc"], "error: config algo.tau='abc': Input should be a valid number"),
        (["sft", "algo.taux=1"], "error: unknown config key 'algo.taux'"),
        (["eval"], "error: eval needs a model: set eval.checkpoint=DIR (or model.path=DIR)"),
        (["eval", "eval.checkpoint=/nonexistent/model"], "error: model directory /nonexistent/model does not exist"),
        (["rl", "rl.reward=nosuch"], "error: rl.reward='nosuch': not a registered reward"),
        (["sft", "data.train_path=/nonexistent.jsonl"], "error: data file /nonexistent.jsonl does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, args, message):
    result = CliRunner().invoke(app, [*args, f"run.output_dir={tmp_path}", *TOY[:4]])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith(message)
    assert len(result.output.strip().splitlines()) == 1


def test_missing_config_dir_for_model(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["eval", f"eval.checkpoint={tmp_path / 'empty'}"])
    assert result.exit_code == 2
    assert "has no config.json: expected a Hugging Face model directory" in result.output


def test_a_new_run_restarts_the_metrics_files(tmp_path: Path):
    from mirrorl.train.metrics import MetricsLogger, read_metrics

    first = MetricsLogger(tmp_path, "rl", tensorboard=False)
    first.log(0, {"reward": 1.0})
    first.log(1, {"reward": 2.0})
    second = MetricsLogger(tmp_path, "rl", tensorboard=False)
    second.log(0, {"reward": 3.0})
    assert read_metrics(tmp_path / "rl_metrics.jsonl") == [{"step": 0, "reward": 3.0}]
