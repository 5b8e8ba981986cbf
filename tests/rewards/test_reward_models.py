"""Reward models (k1.5 sec. 2.3.5): the CoT judge's verdict parser and engine path, the value-head RM.

The models are tiny and built here: a judge fine-tuned for a few seconds to write a JSON verdict
(right when the response's answer is 7, the reference), a random judge that writes garbage, and a
value-head RM trained on a separable preference set (chosen responses end in the reference 17).
"""

from __future__ import annotations

import json
import math
import random
import sys

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from mirrorl.config import CoTRMConfig, ModelConfig, RewardsConfig, RMTrainConfig, ValueHeadRMConfig
from mirrorl.data.encode import encode_prompt
from mirrorl.models import build_char_tokenizer, build_tiny, save_policy
from mirrorl.rewards.batch import GuardedReward
from mirrorl.rewards.registry import get_reward
from mirrorl.rewards.reward_models.common import fill_template
from mirrorl.rewards.reward_models.cot import CoTRewardModel, judge_completion, parse_verdict
from mirrorl.rewards.reward_models.value_head import RMInput, ValueHeadReward, encode_input, map_score, score_inputs
from mirrorl.rollout.engine import Engine
from mirrorl.train.metrics import MetricsLogger
from mirrorl.train.reward_model import (
    Labelled,
    load_rm_data,
    load_rm_rows,
    pairwise_loss,
    pointwise_loss,
    train_reward_model,
)
from mirrorl.train.rl import score
from mirrorl.types import Problem, Sample

torch.set_num_threads(1)
SPEC = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_positions=160)
JUDGE_TEMPLATE = "Q:{question} R:{reference} A:{response}"
CPU = torch.device("cpu")


def problem(answer: str, question: str = "a=9. a-2?") -> Problem:
    return Problem(id="p", prompt=question, answer=answer)


# --- the verdict parser ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ('Both are 7. {"correct": true}', True),
    ('7 is not 8.\n{"correct": false}', False),  # False is a verdict (reward 0.0), not an error
    ('{"correct": true, "why": {"steps": [1, {"correct": false}]}}', True),  # nested: only the top level counts
    ('{"details": {"correct": true}, "correct": false}', False),
    (r'$\frac{1}{2} = 0.5$, the set {1, 2}. {"correct": true} Settled {for sure}.', True),  # LaTeX, trailing text
    ('```json\n{"correct": true, "note": "a } and a { in a string"}\n```', True),
    ('First {"correct": false}; on reflection {"correct": true}', True),  # the last verdict wins
    ('{"step": 1} then {"correct": false} then {"other": 2}', False),  # objects without the key are skipped
])
def test_parser_finds_the_verdict(text, expected):
    verdict = parse_verdict(text)
    assert (verdict.correct, verdict.error, verdict.reward) == (expected, None, float(expected))


@pytest.mark.parametrize(("text", "error"), [
    ("The answer matches, so it is correct.", "no_json"),
    ("{'correct': True}", "no_json"),  # Python, not JSON
    ('{"correct": true,}', "no_json"),  # trailing comma
    ('Reasoning... {"correct": tr', "no_json"),  # cut off inside the object
    ('{"step": 1} then {"correct": fal', "missing_key"),
    ('{"verdict": "correct"}', "missing_key"),
    ('{"result": {"correct": true}}', "missing_key"),  # only nested
    ('{"Correct": true}', "missing_key"),
    ('{"correct": "true"}', "not_bool"),
    ('{"correct": 1}', "not_bool"),
    ('{"correct": null}', "not_bool"),
    ('{"correct": true, "correct": false}', "duplicate_key"),
    ("", "no_json"),
    ("{" * 5000 + "]", "no_json"),
])
def test_parser_errors_are_none_never_a_verdict(text, error):
    verdict = parse_verdict(text)
    assert (verdict.correct, verdict.error, verdict.reward) == (None, error, None)


def test_parser_key_and_unfinished_judgements():
    assert parse_verdict('{"equivalent": false}', key="equivalent").correct is False
    assert parse_verdict('{"correct": true}', key="equivalent").error == "missing_key"
    cut = 'Same value. {"correct": true} But wait, 7 and'  # stopped by max_new_tokens after a verdict
    assert judge_completion(cut, "length", "correct", accept_unfinished=False).error == "unfinished"
    assert judge_completion(cut, "repeat", "correct", accept_unfinished=False).error == "unfinished"
    assert judge_completion(cut, "length", "correct", accept_unfinished=True).correct is True
    assert judge_completion(cut, "stop", "correct", accept_unfinished=False).correct is True


def test_template_is_filled_once_and_checked():
    filled = fill_template(JUDGE_TEMPLATE + ' {"correct": true}', "q {response}", "r", "{question}")
    assert filled == 'Q:q {response} R:r A:{question} {"correct": true}'
    with pytest.raises(ValidationError, match="lacks {reference}"):
        CoTRMConfig(template="Q:{question} A:{response}")
    with pytest.raises(ValidationError, match="lacks {question}"):
        RMTrainConfig(template="R:{reference}")


# --- the CoT judge through the real engine ------------------------------------------------------


def judge_example(rng: random.Random, tokenizer) -> tuple[list[int], list[int]]:
    """A prompt whose response answers a digit; the judgement says whether it is the reference 7."""
    a, answer = rng.randint(1, 9), rng.choice([7, rng.randint(0, 9)])
    response = f"a-2={answer} answer:{answer}"
    prompt = encode_prompt(tokenizer, fill_template(JUDGE_TEMPLATE, f"a={a}. a-2?", "7", response), True)
    judgement = 'same. {"correct": true}' if answer == 7 else 'differ. {"correct": false}'
    return prompt, tokenizer(judgement, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny judge fine-tuned (100 steps, about 5 s) to write a verdict, saved like any HF model."""
    model, tokenizer = build_tiny(SPEC, 0)
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=100, pct_start=0.1)
    for _ in range(100):
        pairs = [judge_example(rng, tokenizer) for _ in range(32)]
        width = max(len(p) + len(j) for p, j in pairs)
        ids = torch.full((32, width), tokenizer.pad_token_id)
        labels = torch.full((32, width), -100)
        for row, (prompt, judgement) in enumerate(pairs):
            ids[row, : len(prompt) + len(judgement)] = torch.tensor(prompt + judgement)
            labels[row, len(prompt) : len(prompt) + len(judgement)] = torch.tensor(judgement)
        model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
    path = tmp_path_factory.mktemp("judge")
    save_policy(model, tokenizer, path)
    return path


def judge_config(path, **changes) -> CoTRMConfig:
    settings = {"path": str(path), "device": "cpu", "template": JUDGE_TEMPLATE, "max_new_tokens": 40, "batch_size": 4}
    return CoTRMConfig(**{**settings, **changes})


def judge_from(path, **changes) -> CoTRewardModel:
    """The judge as the registry builds it: the model at `path` decoding through the engine."""
    return get_reward("cot_rm", RewardsConfig(cot_rm=judge_config(path, **changes)))


def test_trained_judge_scores_through_the_engine_in_request_order(judge_dir):
    judge = judge_from(judge_dir)
    answers = [7, 1, 2, 7, 3, 4, 5, 6, 7, 8, 9, 0]  # 12 requests through 4 slots: slots are refilled
    items = [(f"a-2={a} answer:{a}", problem("7")) for a in answers]
    verdicts = judge.judge(*zip(*items))
    assert [v.reward for v in verdicts] == [1.0 if a == 7 else 0.0 for a in answers]
    assert verdicts[0].judgement == 'same. {"correct": true}'
    assert verdicts[1].judgement == 'differ. {"correct": false}'
    assert judge.counts == {"judged": 10, "cache_hits": 2, "correct": 3, "incorrect": 9}  # answer 7 asked 3 times
    assert judge(["a-2=7 answer:7"], [problem("7")]) == [1.0]  # from the cache
    assert judge.counts["judged"] == 10


def test_garbage_from_a_real_model_is_none_and_the_loop_drops_it():
    model, tokenizer = build_tiny(SPEC, 1)  # untrained: writes random characters
    config = CoTRMConfig(template=JUDGE_TEMPLATE, max_new_tokens=30, accept_unfinished=True)  # the parser sees it all
    judge = CoTRewardModel(config, Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id), tokenizer)
    items = [(f"a-2={a} answer:{a}", problem("7")) for a in range(6)]
    verdicts = judge.judge(*zip(*items))
    assert all(len(v.judgement) > 5 for v in verdicts)  # it did write something
    assert [v.reward for v in verdicts] == [None] * 6
    assert judge.counts["no_json"] + judge.counts["missing_key"] == 6
    samples = [Sample(0, [], [], "stop", text=response) for response, _ in items]
    scored = score(samples, [problem("7")], GuardedReward(judge))
    assert (scored.samples, scored.errors) == ([], [])  # dropped, not scored 0


def test_cut_off_judgements_are_errors(judge_dir):
    items = [("a-2=7 answer:7", problem("7")), ("a-2=3 answer:3", problem("7"))]
    short = judge_from(judge_dir, max_new_tokens=12)  # 'same. {"corr' is 12 characters
    assert [(v.reward, v.error) for v in short.judge(*zip(*items))] == [(None, "unfinished")] * 2
    lenient = judge_from(judge_dir, max_new_tokens=12, accept_unfinished=True)
    assert [(v.reward, v.error) for v in lenient.judge(*zip(*items))] == [(None, "no_json")] * 2


def test_duplicates_cache_and_too_long_prompts(judge_dir, monkeypatch):
    judge = judge_from(judge_dir, cache_size=2)
    calls = []
    original = judge.generator.generate

    def counting(requests, *args, **kwargs):
        calls.append(len(requests))
        return original(requests, *args, **kwargs)

    monkeypatch.setattr(judge.generator, "generate", counting)
    a, b, c = ("a-2=7 answer:7", problem("7")), ("a-2=3 answer:3", problem("7")), ("a-2=4 answer:4", problem("7"))
    assert judge(*zip(a, b, a)) == [1.0, 0.0, 1.0]
    assert calls == [2]  # a judged once
    judge(*zip(b, c))  # c evicts a (cache of 2)
    judge(*zip(a))
    assert calls == [2, 1, 1]
    huge = ("answer:7 " * 30, problem("7", question="a=9. a-2?" * 10))  # prompt + 40 new tokens > 160 positions
    verdict = judge.judge(*zip(huge, a))
    assert [(v.reward, v.error) for v in verdict] == [(None, "too_long"), (1.0, None)]
    assert calls == [2, 1, 1]  # a came from the cache, huge was never sent


def test_judge_plugs_into_the_registry(judge_dir, tmp_path, monkeypatch):
    config = judge_config(judge_dir).model_dump_json()
    (tmp_path / "my_judge.py").write_text(
        "from mirrorl.config import CoTRMConfig, RewardsConfig\n"
        "from mirrorl.rewards.registry import get_reward\n"
        f"judge = get_reward('cot_rm', RewardsConfig(cot_rm=CoTRMConfig.model_validate_json({config!r})))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reward_fn = get_reward("my_judge:judge")  # a batch reward object is taken as it is, not lifted
    assert isinstance(reward_fn, CoTRewardModel)
    assert reward_fn(["a-2=7 answer:7", "a-2=5 answer:5"], [problem("7")] * 2) == [1.0, 0.0]
    with pytest.raises(ValueError, match="rl.reward=cot_rm needs rewards.cot_rm.path"):
        get_reward("cot_rm", RewardsConfig())
    monkeypatch.delitem(sys.modules, "my_judge")


# --- the value-head RM --------------------------------------------------------------------------


def test_losses_and_mapping_match_hand_numbers():
    # pairs (2, 0) and (0, 1): mean(log(1 + e^-2), log(1 + e^1)) = (0.126928 + 1.313262) / 2
    loss = pairwise_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(0.720095, abs=1e-6)
    # -log sigmoid(0) = log 2 for label 1; -log(1 - sigmoid(2)) = log(1 + e^2) = 2.126928 for label 0
    assert pointwise_loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])).item() == pytest.approx(
        (math.log(2) + 2.126928) / 2, abs=1e-6)
    assert [map_score(s, "threshold", 0.5) for s in (0.49, 0.5)] == [0.0, 1.0]
    assert map_score(1.5, "sigmoid", 0.5) == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-12)
    assert map_score(-3.25, "raw", 7.0) == -3.25


def test_input_keeps_the_response_tail_and_ends_with_eos():
    tokenizer = build_char_tokenizer()
    item = RMInput("question?", "17", "x" * 100 + "answer:17")
    ids = encode_input(tokenizer, "Q:{question} R:{reference} A:", item, max_length=40)
    text = tokenizer.decode(ids[:-1])
    assert len(ids) == 40 and ids[-1] == tokenizer.eos_token_id
    assert text == "Q:question? R:17 A:" + "x" * 11 + "answer:17"  # 19 + 20 = 39 characters
    ids = encode_input(tokenizer, "Q:{question} R:{reference} A:", RMInput("q" * 60, "17", "y" * 50), max_length=40)
    # room 39 = 19 for the response (half the window) + the last 20 of "Q:qqq... R:17 A:"
    assert tokenizer.decode(ids[:-1]) == "q" * 12 + " R:17 A:" + "y" * 19


def train(cfg: RMTrainConfig, run_dir):
    """What `mirrorl train-rm` does, on the tiny shape, into run_dir/rm."""
    logger = MetricsLogger(run_dir, "rm", tensorboard=False)
    return train_reward_model(cfg, *load_rm_data(cfg, 0), run_dir / "rm", SPEC, 0, CPU, torch.float32, logger)


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_bad_rows_are_one_line_value_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_rm_rows(str(tmp_path / "missing.jsonl"), "pairwise")
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = write_rows(tmp_path / "pairs.jsonl", [good, {"prompt": "q", "chosen": "a"}])
    with pytest.raises(ValueError, match=r"pairs\.jsonl:2: row has no 'rejected'"):
        load_rm_rows(path, "pairwise")
    path = write_rows(tmp_path / "labels.jsonl", [{"prompt": "q", "response": "a", "label": 1},
                                                 {"prompt": "q", "response": "a", "label": "yes"}])
    with pytest.raises(ValueError, match=r"labels\.jsonl:2: row's 'label' must be true/false or 1/0, got 'yes'"):
        load_rm_rows(path, "pointwise")
    path = write_rows(tmp_path / "ok.jsonl", [{"prompt": "q", "response": "a", "label": 0, "answer": 17}])
    assert load_rm_rows(path, "pointwise") == [Labelled(RMInput("q", "17", "a"), False)]
    with pytest.raises(ValueError, match="rm.train_path is not set"):
        load_rm_data(RMTrainConfig(), 0)
    with pytest.raises(ValueError, match="1 reward-model rows leave none to train on"):
        load_rm_data(RMTrainConfig(train_path=write_rows(tmp_path / "one.jsonl", [good])), 0)
    (tmp_path / "broken.jsonl").write_text('{"prompt": "q"\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl:1: not valid JSON"):
        load_rm_rows(str(tmp_path / "broken.jsonl"), "pairwise")


def preference_rows(rng: random.Random, count: int) -> list[dict]:
    """Chosen responses end in the reference 17; rejected ones in another number, often of the same digits."""
    rows = []
    for _ in range(count):
        a = rng.randint(2, 60)
        wrong = rng.choice([71, 77, 11, 27, 16, 18, rng.randint(10, 99)])
        wrong = wrong if wrong != 17 else 71
        work = f"x+{a}={17 + a} so x={17 + a}-{a}"
        rows.append({"prompt": f"x+{a}={17 + a}. x?", "answer": "17",
                     "chosen": f"{work} answer:17", "rejected": f"{work} answer:{wrong}"})
    return rows


def test_value_head_learns_preferences_saves_and_reloads(tmp_path, monkeypatch):
    rng = random.Random(0)
    cfg = RMTrainConfig(train_path=write_rows(tmp_path / "train.jsonl", preference_rows(rng, 400)),
                        eval_path=write_rows(tmp_path / "eval.jsonl", preference_rows(rng, 100)),
                        steps=100, template="Q:{question} R:{reference} A:")
    result = train(cfg, tmp_path)
    assert result.eval_accuracy > 0.9 and result.num_eval == 100
    assert [json.loads(line)["step"] for line in (tmp_path / "rm_metrics.jsonl").read_text().splitlines()][-1] == 100

    eval_pairs = load_rm_rows(cfg.eval_path, "pairwise")[:20]
    inputs = [pair.chosen for pair in eval_pairs] + [pair.rejected for pair in eval_pairs]
    trained = score_inputs(result.model, result.tokenizer, inputs, 512, 8)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")
    assert model.config.pad_token_id == tokenizer.pad_token_id and model.config.num_labels == 1
    assert model.config.mirrorl_rm_template == "Q:{question} R:{reference} A:"
    reloaded = score_inputs(model, tokenizer, inputs, 512, 8)
    assert reloaded == trained  # to the bit: same weights, same template, same batches
    assert len(set(trained)) > 2  # the scores depend on the input
    assert sum(c > r for c, r in zip(trained[:20], trained[20:])) >= 18
    rebatched = score_inputs(model, tokenizer, inputs, 512, 40)  # padding does not change a score
    assert torch.allclose(torch.tensor(rebatched), torch.tensor(trained), atol=1e-5)

    module = f"from mirrorl.config import ValueHeadRMConfig\n" \
             f"from mirrorl.rewards.reward_models.value_head import ValueHeadReward\n" \
             f"rm = ValueHeadReward(ValueHeadRMConfig(path={str(tmp_path / 'rm')!r}, device='cpu', mapping='raw'))\n"
    (tmp_path / "my_rm.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    reward_fn = get_reward("my_rm:rm")
    items = [(pair.chosen.response, Problem("p", pair.chosen.question, "17")) for pair in eval_pairs]
    items += [(pair.rejected.response, Problem("p", pair.rejected.question, "17")) for pair in eval_pairs]
    assert reward_fn(*zip(*items)) == pytest.approx(trained, abs=1e-5)  # through the registry, same scores
    monkeypatch.delitem(sys.modules, "my_rm")


def test_pointwise_objective_learns_labels(tmp_path):
    rows = [{"prompt": r["prompt"], "answer": "17", "response": r[side], "label": side == "chosen"}
            for r in preference_rows(random.Random(2), 200) for side in ("chosen", "rejected")]
    # 32 sequences a step, as pairwise; BCE needs a higher lr and more steps (at 1e-3 it reached 70% in 60 steps)
    cfg = RMTrainConfig(train_path=write_rows(tmp_path / "train.jsonl", rows), objective="pointwise",
                        eval_fraction=0.2, steps=130, batch_size=32, lr=3e-3,
                        template="Q:{question} R:{reference} A:")
    result = train(cfg, tmp_path)
    assert (result.num_train, result.num_eval) == (320, 80) and result.eval_accuracy > 0.9
    reward = ValueHeadReward(ValueHeadRMConfig(path=str(tmp_path / "rm"), device="cpu", mapping="threshold"))
    items = [(r["response"], Problem("p", r["prompt"], "17")) for r in rows[:20]]  # the 0/1 reward agrees with labels
    assert sum(v == float(r["label"]) for v, r in zip(reward(*zip(*items)), rows[:20])) >= 18
