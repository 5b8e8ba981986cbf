"""Chunked log-probs equal the naive full-logits computation, values and gradients."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mirrorl.algo.logprobs import logprobs_from_hidden, sequence_logprobs, token_logprobs


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 64, 1000])
def test_chunked_equals_naive_values_and_gradients(chunk_size):
    torch.manual_seed(0)
    hidden = torch.randn(3, 9, 8, dtype=torch.double, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.double, requires_grad=True)
    targets = torch.randint(0, 11, (3, 9))
    naive = token_logprobs(hidden @ weight.T, targets)
    chunked = logprobs_from_hidden(hidden, weight, targets, chunk_size, with_entropy=True)
    torch.testing.assert_close(chunked.logprobs, naive.to(chunked.logprobs.dtype))
    probs = torch.softmax(hidden @ weight.T, -1)
    torch.testing.assert_close(chunked.entropy, -(probs * probs.log()).sum(-1).detach().to(chunked.entropy.dtype))
    upstream = torch.randn(3, 9, dtype=torch.double)
    want = torch.autograd.grad((naive * upstream).sum(), (hidden, weight))
    got = torch.autograd.grad((chunked.logprobs * upstream).sum(), (hidden, weight))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_sequence_logprobs_matches_full_forward_and_padding():
    model = _model()
    ids = torch.randint(0, 23, (2, 10))
    full = model(input_ids=ids).logits
    want = torch.log_softmax(full[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    got = sequence_logprobs(model, ids, torch.ones_like(ids), chunk_size=3)
    torch.testing.assert_close(got.logprobs, want, rtol=1e-5, atol=1e-5)
    # right padding: the real tokens of row 1 (first 6) give the same values as unpadded
    padded = ids.clone()
    padded[1, 6:] = 0
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    short = sequence_logprobs(model, ids[1:, :6], torch.ones(1, 6, dtype=torch.long)).logprobs
    torch.testing.assert_close(sequence_logprobs(model, padded, mask).logprobs[1, :5], short[0], rtol=1e-5, atol=1e-5)
    # left padding: shifted real tokens keep their values (position ids follow the mask)
    left = torch.zeros(1, 8, dtype=torch.long)
    left[0, 2:] = ids[1, :6]
    left_mask = torch.zeros_like(left)
    left_mask[0, 2:] = 1
    torch.testing.assert_close(sequence_logprobs(model, left, left_mask).logprobs[0, 2:], short[0],
                               rtol=1e-5, atol=1e-5)
