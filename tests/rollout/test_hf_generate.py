"""The generate()-based rollout path: greedy equals a naive argmax decoder; finish reasons."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mirrorl.config import SamplingConfig
from mirrorl.rollout.hf_generate import hf_generate


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=19, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _naive_greedy(model, prompt, steps, eos):
    ids = list(prompt)
    out = []
    for _ in range(steps):
        with torch.no_grad():
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        out.append(token)
        ids.append(token)
        if token == eos:
            break
    return out


def test_greedy_matches_naive_decoder_with_left_padding():
    model = _model()
    prompts = [[3, 4, 5, 6, 7], [8, 9], [1, 2, 3]]
    params = SamplingConfig(temperature=0.0, max_new_tokens=6, batch_size=2).params()
    # pick as EOS the token the first prompt emits third, so that one stops early
    eos = _naive_greedy(model, prompts[0], 6, eos=-1)[2]
    results = hf_generate(model, prompts, params, eos_id=eos, pad_id=0, seed=0)
    for prompt, result in zip(prompts, results):
        want = _naive_greedy(model, prompt, 6, eos)
        assert result.token_ids == want
        assert result.finish_reason == ("stop" if want[-1] == eos else "length")
    assert results[0].finish_reason == "stop" and len(results[0].token_ids) == 3


def test_sampling_is_seeded_and_leaves_global_rng_alone():
    model = _model()
    params = SamplingConfig(temperature=1.0, max_new_tokens=8).params()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = hf_generate(model, [[1, 2]] * 4, params, eos_id=18, pad_id=0, seed=7)
    after = torch.rand(1)
    b = hf_generate(model, [[1, 2]] * 4, params, eos_id=18, pad_id=0, seed=7)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert torch.equal(before, after)
    assert len({tuple(r.token_ids) for r in a}) > 1  # temperature 1 really samples
