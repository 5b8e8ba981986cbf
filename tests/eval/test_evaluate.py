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
from mirrorl.rewards.batch import GuardedReward, per_sample
from mirrorl.rewards.registry import answer_extractor, chain_sum_reward, get_reward
from mirrorl.types import Completion, GenerateResult, Problem

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
                      greedy=True, use_chat_template=True, seed=0, ks=(1, 4), extract=answer_extractor("chain_sum"))
    assert generator.calls == [(100, 0.7, 0), (25, 0.0, 0)]  # sampled at the given temperature, then greedy
    assert 0.3 < result.pass1 < 0.7 and result.greedy_accuracy == 1.0  # the script answers right when greedy
    # all scored, 4 samples each: averaged pass@1 over problems is pass@1 over samples
    assert result.pass_at_k["1"] == pytest.approx(result.pass1, abs=1e-12)
    assert result.pass1 <= result.pass_at_k["4"] <= 1.0 and set(result.maj_at_k) == {"1", "4"}
    assert result.unscored == 0 and result.num_problems == 25
    texts = [f"answer:{p.answer}" for p in problems]
    assert result.mean_tokens == pytest.approx(sum(len(t) + 1 for t in texts) * 4 / 100, abs=0.5)


class ListGenerator:
    """A generator that answers request i of each call with `texts[call][i]` (and EOS), whatever the prompt."""

    def __init__(self, tokenizer, *texts: list[str]) -> None:
        self.tokenizer, self.texts, self.calls = tokenizer, list(texts), 0

    def generate(self, requests, params, seed) -> GenerateResult:
        texts = self.texts[self.calls]
        assert len(requests) == len(texts)
        self.calls += 1
        ids = [[*self.tokenizer(t, add_special_tokens=False)["input_ids"], self.tokenizer.eos_token_id] for t in texts]
        return GenerateResult([Completion(i, [0.0] * len(i), "stop") for i in ids], 0, sum(map(len, ids)), 0.0)

    def update_weights(self, version, state) -> None:
        pass


def _unless_skipped(response: str, problem: Problem) -> float | None:
    """chain_sum's reward, but unscored (None) for a response that says 'skip'."""
    return None if "skip" in response else chain_sum_reward(response, problem)


def test_evaluate_reports_pass_at_k_maj_at_k_tokens_per_correct_and_extracted_answers():
    tokenizer = build_char_tokenizer()  # one token a character; +1 for EOS below
    problems = [Problem("p0", "q0", "5"), Problem("p1", "q1", "7"), Problem("p2", "q2", "3")]
    sampled = ["answer:6", "answer:5", "answer:5", "x",  # p0: F T T F, answers 6 5 5 -; tokens 9 9 9 2
               "answer:8", "answer:7", "answer:8", "answer:7",  # p1: F T F T, answers 8 7 8 7; tokens 9 each
               "answer:3 skip", "answer:3", "answer:4", "answer:4"]  # p2: - T F F, answers 3 3 4 4; 14 9 9 9
    generator = ListGenerator(tokenizer, sampled, ["answer:5", "answer:7", "zzz"])
    params = SamplingConfig(temperature=0.7, max_new_tokens=20).params()
    result = evaluate(generator, tokenizer, problems, GuardedReward(per_sample(_unless_skipped)), params,
                      num_samples=4, greedy=True, use_chat_template=False, seed=0, ks=(1, 2, 4),
                      extract=answer_extractor("chain_sum"))
    # pass@k per problem over its scored samples: p0 and p1 have n=4, c=2; p2 has n=3 (one unscored), c=1
    #   k=1: c/n -> 1/2, 1/2, 1/3; mean 4/9
    #   k=2: 1 - C(n-c, 2)/C(n, 2) -> 1 - 1/6, 1 - 1/6, 1 - C(2,2)/C(3,2) = 2/3; mean (5/6 + 5/6 + 2/3)/3 = 7/9
    #   k=4: 1, 1, p2 left out (3 scored < 4); mean 1
    assert result.pass_at_k == {"1": pytest.approx(4 / 9), "2": pytest.approx(7 / 9), "4": pytest.approx(1.0)}
    assert result.pass1 == pytest.approx(5 / 11)  # 5 right of 11 scored samples: weighs samples, not problems
    # maj@k over the first k samples' answers:
    #   k=1: p0 "6" wrong; p1 "8" wrong; p2 "3" only unscored -> left out; 0 of 2
    #   k=2: p0 6-5 tie -> "6" (first) wrong; p1 8-7 tie -> "8" wrong; p2 "3" twice, one scored right; 1 of 3
    #   k=4: p0 "5" (2 votes; "x" has no answer) right; p1 8-7 tie -> "8" wrong; p2 3-4 tie -> "3" right; 2 of 3
    assert result.maj_at_k == {"1": 0.0, "2": pytest.approx(1 / 3), "4": pytest.approx(2 / 3)}
    # tokens: p0 9+9+9+2 = 29, p1 4*9 = 36, p2 14+9+9+9 = 41; 106 tokens, 5 right -> 21.2 per correct answer
    assert result.mean_tokens == pytest.approx(106 / 12)
    assert result.tokens_per_correct == pytest.approx(106 / 5)
    assert result.unscored == 1 and result.greedy_accuracy == pytest.approx(2 / 3)  # greedy: 5 right, 7 right, zzz
    by_sample = [(r["extracted"], r["correct"], r["tokens"]) for r in result.records]
    assert by_sample[:4] == [("6", False, 9), ("5", True, 9), ("5", True, 9), (None, False, 2)]
    assert by_sample[8] == ("3", None, 14)  # the unscored one still carries its answer
    assert [r["extracted"] for r in result.records if r["greedy"]] == ["5", "7", None]
    assert {"pass_at_k", "maj_at_k", "tokens_per_correct"} <= result.as_dict().keys()

    # no extractor: no maj@k, no answers; with none right there are no tokens per correct answer
    none_right = ListGenerator(tokenizer, ["answer:1"] * 6)
    plain = evaluate(none_right, tokenizer, problems[:3], GuardedReward(per_sample(_unless_skipped)), params,
                     num_samples=2, greedy=False, use_chat_template=False, seed=0, ks=(2,))
    assert (plain.maj_at_k, plain.tokens_per_correct, plain.pass_at_k) == ({}, None, {"2": 0.0})
    assert all(r["extracted"] is None for r in plain.records)


def test_evaluate_refuses_k_above_the_number_of_samples_before_sampling():
    tokenizer = build_char_tokenizer()
    generator = ListGenerator(tokenizer)
    params = SamplingConfig(temperature=0.7, max_new_tokens=20).params()
    with pytest.raises(ValueError, match=r"k=5 .*n=4"):
        evaluate(generator, tokenizer, [Problem("p", "q", "1")], GuardedReward(get_reward("chain_sum")), params,
                 num_samples=4, greedy=False, use_chat_template=False, seed=0, ks=(1, 5))
    assert generator.calls == 0


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
