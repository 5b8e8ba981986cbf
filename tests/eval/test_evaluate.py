"""Evaluation: the arithmetic on hand-worked numbers, a user-defined generator, and rewards that raise."""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mirrorl.cli import app
from mirrorl.config import SamplingConfig
from mirrorl.data.tasks import make_split
from mirrorl.eval.evaluate import evaluate, tally
from mirrorl.models import build_char_tokenizer
from mirrorl.rewards.batch import GuardedReward
from mirrorl.rewards.registry import get_reward
from mirrorl.types import Problem

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # scripted.py
from scripted import ScriptedGenerator  # noqa: E402


def test_tally_averages_pass1_over_scored_samples_per_difficulty():
    easy, hard = Problem("e", "q", "1", difficulty=1.0), Problem("h", "q", "2", difficulty=3.0)
    targets = [easy, easy, easy, hard, hard, hard]  # 3 samples per problem
    sampled = [1.0, 0.0, 1.0, None, 1.0, 0.0]  # one unscored: left out, not counted wrong
    result = tally(sampled, targets, num_samples=3, mean_tokens=12.5, greedy=[1.0, None])
    assert result.pass1 == pytest.approx(3 / 5)  # 3 right of 5 scored
    assert result.pass1_by_difficulty == {"1.0": pytest.approx(2 / 3), "3.0": pytest.approx(1 / 2)}
    assert result.greedy_accuracy == 1.0  # 1 right of 1 scored greedy answer
    assert (result.unscored, result.num_problems, result.num_samples, result.mean_tokens) == (2, 2, 3, 12.5)
    no_greedy = tally([0.0, 1.0], [easy, easy], num_samples=2, mean_tokens=3.0)
    assert (no_greedy.pass1, no_greedy.greedy_accuracy, no_greedy.unscored) == (0.5, None, 0)


def test_a_user_defined_generator_drives_evaluate():
    tokenizer = build_char_tokenizer()
    problems = make_split(25, seed=3)
    generator = ScriptedGenerator(tokenizer, right=0.5)
    params = SamplingConfig(temperature=0.7, max_new_tokens=20).params()
    result = evaluate(generator, tokenizer, problems, GuardedReward(get_reward("chain_sum")), params, num_samples=4,
                      greedy=True, use_chat_template=True, seed=0)
    assert generator.calls == [(100, 0.7, 0), (25, 0.0, 0)]  # sampled at the given temperature, then greedy
    assert 0.3 < result.pass1 < 0.7 and result.greedy_accuracy == 1.0  # the script answers right when greedy
    assert result.unscored == 0 and result.num_problems == 25
    texts = [f"answer:{p.answer}" for p in problems]
    assert result.mean_tokens == pytest.approx(sum(len(t) + 1 for t in texts) * 4 / 100, abs=0.5)


def _eval(tmp_path: Path, policy: Path, reward: str):
    args = ["eval", f"eval.checkpoint={policy}", f"run.output_dir={tmp_path}", f"rl.reward={reward}",
            "data.num_eval=6", "eval.num_samples=2", "rollout.max_new_tokens=8", "run.tensorboard=false"]
    sys.path.insert(0, str(HERE.parent / "train"))  # toy_rewards.py
    try:
        return CliRunner().invoke(app, args)
    finally:
        sys.path.remove(str(HERE.parent / "train"))


def test_mirrorl_eval_reports_unscored_samples_and_fails_only_when_none_was_scored(tmp_path, tiny_policy_dir):
    some = _eval(tmp_path / "some", tiny_policy_dir, "toy_rewards:varied")  # raises on about a seventh
    assert some.exit_code == 0, some.output
    (saved_path,) = (tmp_path / "some").glob("eval_*.json")
    saved = json.loads(saved_path.read_text())
    assert saved["unscored"] > 0 and "responses unscored" in some.output and "cannot score this response" in some.output
    assert "Loading weights" not in some.output  # only mirrorl's own lines: transformers' bars are off
    samples = [json.loads(line) for line in saved_path.with_name(f"{saved_path.stem}_samples.jsonl").open()]
    assert len(samples) == saved["num_problems"] * (saved["num_samples"] + 1)  # n sampled and one greedy each
    assert sum(row["score"] is None for row in samples) == saved["unscored"]
    assert sum(row["greedy"] for row in samples) == saved["num_problems"]
    assert {"input", "output", "gts", "score", "step", "correct", "tokens", "finish_reason"} <= samples[0].keys()
    every = _eval(tmp_path / "all", tiny_policy_dir, "toy_rewards:always_raises")
    assert every.exit_code != 0
    message = every.output.strip().splitlines()[-1]
    assert "the reward could score none of 12 responses" in message and "ZeroDivisionError" in message
