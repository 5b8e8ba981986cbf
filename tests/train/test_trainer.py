"""The optimize phase: `build_train_batch` on hand-made samples, `LocalTrainer` against a step written out."""

import copy
import random

import torch
from transformers import AutoModelForCausalLM

from mirrorl.algo.logprobs import sequence_logprobs
from mirrorl.algo.losses import LossInputs, mirror_descent_loss
from mirrorl.config import ModelConfig, SamplingConfig
from mirrorl.models import build_tiny
from mirrorl.rollout.engine import Engine
from mirrorl.train.trainer import LocalTrainer, build_train_batch, minibatches, per_token
from mirrorl.types import Request, Sample

SMALL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def _trainer(model, tokenizer, **changes) -> LocalTrainer:
    settings = dict(loss="mirror_descent", loss_params={"tau": 0.1, "length_normalize": False}, lr=1e-3,
                    grad_clip=1.0, logprob_chunk_size=16, off_policy_correction="truncated_is", is_cap=1.0)
    return LocalTrainer(model, tokenizer, **{**settings, **changes})


def test_per_token_values_sit_under_their_tokens():
    like = torch.zeros(2, 4)
    # prompt lengths 2 and 1: position t predicts token t+1, so responses start at positions 1 and 0
    values = per_token([2, 1], [[-0.1, -0.2, -0.3], [-0.4]], like)
    assert torch.allclose(values, torch.tensor([[0.0, -0.1, -0.2, -0.3], [-0.4, 0.0, 0.0, 0.0]]))


def test_build_train_batch_marks_older_tokens_and_masks_them_for_newest_only():
    continued = Sample(problem_index=0, prompt_ids=[1, 2], response_ids=[5, 6, 7, 8], finish_reason="stop",
                       versions=[3, 3, 4, 4], logprobs=[-0.1, -0.2, -0.3, -0.4], group_id=0, reward=1.0,
                       length_reward=0.25)
    fresh = Sample(problem_index=1, prompt_ids=[1], response_ids=[9, 9], finish_reason="stop", versions=[4, 4],
                   logprobs=[-0.5, -0.6], group_id=1, correct=True)
    both = build_train_batch([continued, fresh], iteration=4, pad_id=0, grad_steps=1, rng=random.Random(0))
    newest = build_train_batch([continued, fresh], iteration=4, pad_id=0, grad_steps=1, rng=random.Random(0),
                               train_tokens="newest")
    # responses sit at positions 1..4 (continued) and 0..1 (fresh)
    assert both.loss_mask.tolist() == [[0, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert both.older.tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 0, 0]]
    assert newest.loss_mask.tolist() == [[0, 0, 0, 1, 1], [1, 1, 0, 0, 0]]
    assert torch.allclose(both.behaviour_logprobs[0], torch.tensor([0.0, -0.1, -0.2, -0.3, -0.4]))
    assert both.rewards.tolist() == [1.25, 0.0] and both.correct.tolist() == [False, True]
    assert both.input_ids.tolist() == [[1, 2, 5, 6, 7, 8], [1, 9, 9, 0, 0, 0]]


def test_minibatches_hold_whole_groups_every_row_once_and_follow_the_rng():
    group_ids = [0, 0, 1, 1, 2, 2, 3]
    batches = minibatches(group_ids, grad_steps=2, rng=random.Random(0))
    assert len(batches) == 2
    rows = sorted(int(r) for batch in batches for r in batch)
    assert rows == list(range(7))
    for batch in batches:
        groups = {group_ids[int(r)] for r in batch}
        assert all(group_ids.count(g) == sum(group_ids[int(r)] == g for r in batch) for g in groups)
    again = minibatches(group_ids, grad_steps=2, rng=random.Random(0))
    assert [b.tolist() for b in batches] == [b.tolist() for b in again]
    assert len(minibatches([5, 5], grad_steps=4, rng=random.Random(0))) == 1  # never more steps than groups


def _rollout(model, tokenizer, version: int) -> list[Sample]:
    prompts = [tokenizer.encode(text) for text in ("a=1 b=2.", "a=3.", "a=9 b=9 c=9.", "b=4.")]
    params = SamplingConfig(max_new_tokens=12, repeat={"enabled": False}).params()
    out = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id).generate([Request(p) for p in prompts],
                                                                                 params, seed=0)
    return [Sample(problem_index=0, prompt_ids=p, response_ids=c.token_ids, finish_reason=c.finish_reason,
                   versions=[version] * len(c.token_ids), logprobs=c.logprobs, group_id=i // 2,
                   reward=float(i % 2), correct=bool(i % 2))
            for i, (p, c) in enumerate(zip(prompts, out.completions))]


def test_reference_logprobs_from_the_generator_equal_a_forward_pass():
    model, tokenizer = build_tiny(SMALL, 0)
    samples = _rollout(model, tokenizer, version=5)
    trainer = _trainer(model, tokenizer)
    on_policy = build_train_batch(samples, 5, 0, 1, random.Random(0))
    stale = build_train_batch(samples, 6, 0, 1, random.Random(0))  # every token older: a forward pass
    mask = on_policy.loss_mask
    rows = torch.arange(on_policy.input_ids.shape[0])
    assert torch.equal(trainer.reference_logprobs(on_policy, rows), on_policy.behaviour_logprobs)
    forward = trainer.reference_logprobs(stale, rows)
    assert torch.allclose(forward * mask, on_policy.behaviour_logprobs * mask, atol=1e-5)
    assert mask.sum() == sum(len(s.response_ids) for s in samples)


def test_train_step_is_the_mirror_descent_step_written_out():
    model, tokenizer = build_tiny(SMALL, 0)
    samples = _rollout(model, tokenizer, version=0)
    reference = copy.deepcopy(model)
    batch = build_train_batch(samples, 0, 0, grad_steps=1, rng=random.Random(0))
    metrics = _trainer(model, tokenizer).train_step(batch, lr=1e-2)

    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    reference.train()
    current = sequence_logprobs(reference, batch.input_ids, batch.attention_mask, 16)
    out = mirror_descent_loss(LossInputs(current.logprobs, batch.behaviour_logprobs, batch.loss_mask, batch.rewards,
                                         batch.correct, batch.group_ids), tau=0.1, length_normalize=False)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    optimizer.step()
    for (name, trained), (_, expected) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.allclose(trained, expected, atol=1e-6), name
    assert metrics.loss["loss"] == float(out.loss.detach())
    assert metrics.stale_weight_mean is None and set(metrics.as_dict()) >= {"loss", "grad_norm", "entropy", "kl"}


def test_save_writes_the_policy_and_load_optimizer_restores_adam(tmp_path):
    model, tokenizer = build_tiny(SMALL, 0)
    trainer = _trainer(model, tokenizer)
    trainer.train_step(build_train_batch(_rollout(model, tokenizer, 0), 0, 0, 2, random.Random(0)), lr=1e-3)
    trainer.save(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), trainer.state_dict().values()))
    fresh = _trainer(reloaded, tokenizer)
    fresh.load_optimizer(tmp_path)
    saved, loaded = trainer.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k]["exp_avg"], loaded[k]["exp_avg"]) for k in saved)
