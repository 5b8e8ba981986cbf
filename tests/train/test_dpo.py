"""DPO training: the reference is the starting policy, a step moves the margin the right way, the
pairs can be sampled from the policy itself, and batching does not change the log-probs."""

import json
import math

import pytest
import torch

from mirrorl.config import DPOConfig, load_config
from mirrorl.data.encode import encode_prompt, encode_response
from mirrorl.recipes import run_dpo
from mirrorl.train.dpo import PreferencePair, pair_logprobs, reference_logprobs, train_dpo
from mirrorl.train.metrics import MetricsLogger


def _pairs(tokenizer) -> list[PreferencePair]:
    rows = [("a=1 b=2. sum a-b?", "1+2=3 answer:3", "a=1 b=2:1+2=3 check:3-2=1 ok. answer:3"),
            ("a=4 b=4 c=1. sum a-c?", "4+4=8 8+1=9 answer:9", "a=4 b=4:4+4=8 c=1:8+1=9 answer:8"),
            ("a=9 b=9. sum a-b?", "9+9=18 answer:18", "answer:17")]
    return [PreferencePair(encode_prompt(tokenizer, p, True), encode_response(tokenizer, c),
                           encode_response(tokenizer, r)) for p, c, r in rows]


def test_first_step_is_log_two_and_training_orders_the_pairs(tiny_model, tmp_path):
    model, tokenizer = tiny_model
    pairs = _pairs(tokenizer)
    before = reference_logprobs(model, pairs, tokenizer.pad_token_id, batch_size=2)
    logger = MetricsLogger(tmp_path, "dpo", tensorboard=False, wandb=False)
    cfg = DPOConfig(steps=20, batch_size=3, lr=3e-3, warmup_ratio=0.0, beta=0.5)
    result = train_dpo(model, pairs, cfg, tokenizer.pad_token_id, logger, seed=0)
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "dpo_metrics.jsonl").read_text().splitlines()]
    # step 0: the policy is the reference, so every margin is 0 and the loss is -log sigmoid(0) = log 2
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and rows[0]["reward_margin"] == pytest.approx(0)
    assert result.steps == 20 and result.num_pairs == 3 and rows[-1]["loss"] < 0.3
    with torch.no_grad():
        chosen, rejected = pair_logprobs(model, pairs, tokenizer.pad_token_id, torch.device("cpu"))
    for (ref_chosen, ref_rejected), c, r in zip(before, chosen.tolist(), rejected.tolist()):
        assert c - ref_chosen > r - ref_rejected  # every chosen response gained on its rejected one


def test_reference_logprobs_do_not_depend_on_the_batch(tiny_model):
    model, tokenizer = tiny_model
    pairs = _pairs(tokenizer)
    together = reference_logprobs(model, pairs, tokenizer.pad_token_id, batch_size=3)
    alone = [reference_logprobs(model, [pair], tokenizer.pad_token_id, batch_size=1)[0] for pair in pairs]
    assert torch.tensor(together) == pytest.approx(torch.tensor(alone), abs=1e-5)


def test_pairs_sampled_from_the_policy_are_written_and_trained_on(tiny_policy_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))  # toy_rewards
    cfg = load_config(None, [
        f"run.output_dir={tmp_path}", f"dpo.init_from={tiny_policy_dir}", "rl.reward=toy_rewards:varied",
        "dpo.num_problems=6", "dpo.num_samples=4", "dpo.steps=2", "dpo.batch_size=4", "rollout.max_new_tokens=12",
        "data.num_rl=6", "data.num_sft=4", "data.num_eval=4", "run.tensorboard=false", "run.num_threads=1",
    ])
    final = run_dpo(cfg)
    rows = [json.loads(line) for line in (tmp_path / "dpo_pairs.jsonl").read_text().splitlines()]
    report = json.loads((tmp_path / "dpo_pairs_report.json").read_text())
    assert report["num_pairs"] == len(rows) > 0 and report["num_problems"] == 6
    for row in rows:  # each negative is wrong or at least 1.5x the positive's tokens
        assert not row["rejected_correct"] or row["rejected_tokens"] >= 1.5 * row["chosen_tokens"]
    assert (final / "model.safetensors").is_file() and (tmp_path / "dpo_metrics.jsonl").is_file()
