"""The engine against references: a naive full-recompute decoder, a forward pass, itself in one go."""

import pytest
import torch

from mirrorl.config import ModelConfig, RepeatConfig, SamplingConfig
from mirrorl.models import build_tiny
from mirrorl.rollout.engine import Engine, length_chunks
from mirrorl.rollout.repeat import is_repeating
from mirrorl.types import RepeatRule, Request, SamplingParams

NO_REPEAT = RepeatConfig(enabled=False)


def sampling(**settings) -> SamplingParams:
    return SamplingConfig(**settings).params()


def scramble(model, seed: int) -> None:
    """Large random weights, so greedy outputs differ from prompt to prompt; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    model.eval()


@pytest.fixture(scope="module")
def policy():
    """A tiny random model with large weights, so greedy outputs differ from prompt to prompt."""
    model, tokenizer = build_tiny(ModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128), 0)
    scramble(model, seed=0)
    prompts = [tokenizer.encode(f"a={i % 9 + 1} b={i * 7 % 9 + 1}. sum a-{'bcd'[i % 3]}?" + " " * (i % 4))
               for i in range(10)]
    return model, tokenizer, prompts, tokenizer.convert_tokens_to_ids(":")


def naive_greedy(model, prompt, stop_ids, max_new_tokens):
    """Recompute the whole sequence for every new token: the slow, obviously right decoder."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(token)
        if token in stop_ids:
            return ids[len(prompt):], "stop"
    return ids[len(prompt):], "length"


def test_greedy_equals_naive_decoder_with_slot_refill(policy):
    model, tokenizer, prompts, colon = policy
    params = sampling(temperature=0, max_new_tokens=30, batch_size=3, stop_token_ids=[colon], repeat=NO_REPEAT)
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    result = engine.generate([Request(p) for p in prompts], params, seed=0)
    expected = [naive_greedy(model, p, {colon, tokenizer.eos_token_id}, 30) for p in prompts]
    assert [(c.token_ids, c.finish_reason) for c in result.completions] == expected
    assert {reason for _, reason in expected} == {"stop", "length"}  # both endings, so slots were refilled
    assert result.new_tokens == sum(len(tokens) for tokens, _ in expected)
    assert 0 < result.idle_fraction < 1 and result.weight_version == 0


def test_length_chunks_keep_every_padded_row_at_least_half_real():
    assert length_chunks([10, 200, 120, 90, 12, 30]) == [[1, 2], [3], [5], [4, 0]]
    assert length_chunks([7, 7, 8]) == [[2, 0, 1]]
    lengths = [(n * 37) % 101 + 1 for n in range(50)]
    chunks = length_chunks(lengths)
    assert sorted(row for chunk in chunks for row in chunk) == list(range(50))
    for chunk in chunks:
        assert all(2 * lengths[row] > lengths[chunk[0]] for row in chunk[1:])


def test_continuations_and_new_prompts_admitted_together_match_the_naive_decoder(policy):
    """Long continued prefixes and fresh prompts in one admission (so in several prefill chunks)."""
    model, tokenizer, prompts, colon = policy
    stops = {colon, tokenizer.eos_token_id}
    prefixes = [naive_greedy(model, p, set(), 24)[0][: 6 * (i % 5)] for i, p in enumerate(prompts)]
    params = sampling(temperature=0, max_new_tokens=30, batch_size=len(prompts), stop_token_ids=[colon],
                            repeat=NO_REPEAT)
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    out = engine.generate([Request(p, prefix) for p, prefix in zip(prompts, prefixes)], params, seed=0).completions
    assert len(length_chunks([len(p) + len(prefix) for p, prefix in zip(prompts, prefixes)])) > 1
    for prompt, prefix, completion in zip(prompts, prefixes, out):
        tokens, reason = naive_greedy(model, prompt + prefix, stops, 30 - len(prefix))
        assert (completion.token_ids, completion.finish_reason) == (tokens, reason)


def test_logprobs_equal_a_forward_pass_and_seeds_reproduce(policy):
    model, tokenizer, prompts, _ = policy
    params = sampling(temperature=0.8, top_p=0.9, top_k=20, max_new_tokens=25, batch_size=4, repeat=NO_REPEAT)
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    out = engine.generate([Request(p) for p in prompts], params, seed=3).completions
    for prompt, completion in zip(prompts, out):
        logits = model(torch.tensor([prompt + completion.token_ids])).logits[0]
        forward = torch.log_softmax(logits.float(), -1)[len(prompt) - 1 : -1]
        expected = forward.gather(1, torch.tensor(completion.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-5)
    again = engine.generate([Request(p) for p in prompts], params, seed=3).completions
    other = engine.generate([Request(p) for p in prompts], params, seed=4).completions
    assert [c.token_ids for c in again] == [c.token_ids for c in out]
    assert [c.token_ids for c in other] != [c.token_ids for c in out]


def test_budgeted_segments_equal_one_go_under_greedy(policy):
    model, tokenizer, prompts, colon = policy
    params = sampling(temperature=0, max_new_tokens=40, batch_size=4, repeat=NO_REPEAT)
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    whole = engine.generate([Request(p) for p in prompts], params, seed=0).completions
    pieces = {i: [] for i in range(len(prompts))}
    reasons = {}
    segments = 0
    while len(reasons) < len(prompts):
        pending = [i for i in pieces if i not in reasons]
        requests = [Request(prompts[i], pieces[i], budget=7) for i in pending]
        out = engine.generate(requests, params, seed=segments).completions
        for i, completion in zip(pending, out):
            pieces[i] += completion.token_ids
            if completion.finish_reason != "budget":
                reasons[i] = completion.finish_reason
        segments += 1
    assert segments >= 40 // 7
    assert [pieces[i] for i in range(len(prompts))] == [c.token_ids for c in whole]
    assert [reasons[i] for i in range(len(prompts))] == [c.finish_reason for c in whole]


def test_repeat_stop_fires_exactly_when_the_tail_first_loops(policy):
    model, tokenizer, prompts, _ = policy
    rule = RepeatRule(max_period=4, min_repeats=3, min_span=4)
    params = sampling(temperature=0, max_new_tokens=80, batch_size=4, repeat=vars(rule))
    out = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id).generate([Request(p) for p in prompts],
                                                                                  params, seed=0).completions
    assert {"repeat", "length"} <= {c.finish_reason for c in out}
    for completion in out:
        tokens = completion.token_ids
        looped_before = any(is_repeating(tokens[:n], rule) for n in range(1, len(tokens)))
        assert not looped_before
        assert is_repeating(tokens, rule) == (completion.finish_reason == "repeat")


def test_a_request_without_room_is_refused(policy):
    model, tokenizer, prompts, _ = policy
    params = sampling(max_new_tokens=4, repeat=NO_REPEAT)
    with pytest.raises(ValueError, match="no room left"):
        Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id).generate(
            [Request(prompts[0], [5, 5, 5, 5])], params, seed=0)


def test_update_weights_sets_the_version_every_completion_reports(policy):
    model, tokenizer, prompts, _ = policy
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    params = sampling(max_new_tokens=3, repeat=NO_REPEAT)
    assert engine.generate([Request(prompts[0])], params, seed=0).weight_version == 0
    engine.update_weights(7, model.state_dict())
    assert engine.generate([Request(prompts[0])], params, seed=0).weight_version == 7
    assert engine.generate([], params, seed=0).weight_version == 7


def test_a_weight_update_is_seen_by_the_next_call_without_copying(policy):
    model, tokenizer, prompts, colon = policy
    params = sampling(temperature=0, max_new_tokens=12, batch_size=4, repeat=NO_REPEAT)
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    before = [c.token_ids for c in engine.generate([Request(p) for p in prompts[:4]], params, seed=0).completions]
    weight = model.model.layers[0].mlp.down_proj.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(-3.0)  # what an optimizer step does: in place, same tensor
        after = [c.token_ids for c in engine.generate([Request(p) for p in prompts[:4]], params, seed=0).completions]
        assert after != before
        assert after == [naive_greedy(model, p, {tokenizer.eos_token_id}, 12)[0] for p in prompts[:4]]
    finally:
        with torch.no_grad():
            weight.copy_(saved)


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_other_model_families_decode_like_the_naive_decoder(policy, family):
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    _, tokenizer, prompts, colon = policy
    vocab = len(tokenizer)
    if family == "qwen2":
        config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = Qwen2ForCausalLM(config)
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256))
    scramble(model, seed=1)
    params = sampling(temperature=0, max_new_tokens=20, batch_size=3, stop_token_ids=[colon], repeat=NO_REPEAT)
    out = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id).generate(
        [Request(p) for p in prompts], params, seed=0).completions
    expected = [naive_greedy(model, p, {colon, tokenizer.eos_token_id}, 20) for p in prompts]
    assert [(c.token_ids, c.finish_reason) for c in out] == expected
