"""Losses against hand-derived numbers, and the mirror-descent gradient against the report's eq. 3."""

import math
from functools import partial

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mirrorl.algo.logprobs import sequence_logprobs
from mirrorl.algo.losses import (
    LossInputs,
    PreferenceInputs,
    dpo_loss,
    group_mean,
    group_pg_loss,
    mirror_descent_loss,
    rest_loss,
    stale_weights,
)


def _inputs(logprobs, ref, mask, rewards, correct, groups):
    return LossInputs(torch.tensor(logprobs), torch.tensor(ref), torch.tensor(mask), torch.tensor(rewards),
                      torch.tensor(correct), torch.tensor(groups))


def test_stale_weights_by_hand():
    ref = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -0.5, -4.0]])
    behaviour = torch.tensor([[-1.0, -1.0, -9.0], [-1.5, -1.0, -4.0]])
    stale = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # the current segment's tokens carry no weight
    # row 0: exp(-2 - -1) = exp(-1); row 1: exp(0.5 + 0.5) = e, truncated at the cap
    assert stale_weights(ref, behaviour, stale, cap=1.0).tolist() == pytest.approx([torch.e ** -1, 1.0])
    assert stale_weights(ref, behaviour, stale, cap=5.0).tolist() == pytest.approx([torch.e ** -1, torch.e])


def test_weights_scale_each_samples_share_of_the_loss():
    inputs = _inputs([[-1.0, -1.0], [-3.0, 0.0]], [[-2.0, -1.0], [-2.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]],
                     [1.0, 0.0], [True, False], [0, 0])
    losses = [partial(mirror_descent_loss, tau=0.1, length_normalize=False), rest_loss,
              partial(group_pg_loss, clip_eps=0.2, scale_by_std=False)]
    for loss in losses:
        plain = float(loss(inputs).loss)
        inputs.weights = torch.ones(2)
        assert float(loss(inputs).loss) == pytest.approx(plain)
        inputs.weights = None
    # mirror descent: residuals 0.16 and 0.16 (see the hand example below); weights [1, 0.25] -> (0.16 + 0.04) / 2 / 0.2
    inputs.weights = torch.tensor([1.0, 0.25])
    assert float(mirror_descent_loss(inputs, tau=0.1, length_normalize=False).loss) == pytest.approx(0.5)


def test_group_mean():
    assert group_mean(torch.tensor([1.0, 0.0, 3.0, 1.0]), torch.tensor([7, 7, 2, 7])).tolist() == pytest.approx(
        [2 / 3, 2 / 3, 3.0, 2 / 3])


def test_mirror_descent_value_by_hand():
    # D = [(-1 - -2) + (-1 - -1), (-3 - -2)] = [1, -1]; masked third token ignored.
    # rewards [1, 0], rbar 0.5 -> advantages [0.5, -0.5]; tau 0.5
    # residuals (0.5 - 0.5*1)^2 = 0, (-0.5 + 0.5)^2 = 0 -> loss 0
    inputs = _inputs([[-1.0, -1.0, -9.0], [-3.0, 0.0, 0.0]], [[-2.0, -1.0, 0.0], [-2.0, 0.0, 0.0]],
                     [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], [1.0, 0.0], [True, False], [0, 0])
    assert float(mirror_descent_loss(inputs, tau=0.5, length_normalize=False).loss) == pytest.approx(0.0)
    # tau 0.1: residuals (0.5 - 0.1)^2 = 0.16, (-0.5 + 0.1)^2 = 0.16 -> mean 0.16 / 0.2 = 0.8
    out = mirror_descent_loss(inputs, tau=0.1, length_normalize=False)
    assert float(out.loss) == pytest.approx(0.8)
    assert out.metrics["log_ratio_mean"] == pytest.approx(0.0)
    # length-normalised: 0.16 / 2 tokens and 0.16 / 1 token -> mean 0.12 / 0.2 = 0.6
    assert float(mirror_descent_loss(inputs, tau=0.1, length_normalize=True).loss) == pytest.approx(0.6)


def _tiny_model(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=17, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config).double()


@pytest.mark.parametrize("perturb", [0.0, 0.05])
def test_mirror_descent_gradient_equals_eq3(perturb):
    """Autograd of the surrogate equals -(1/k) sum_j [(r_j - rbar) grad log pi_j - tau/2 grad D_j^2]."""
    tau, k, prompt_len = 0.3, 4, 3
    policy = _tiny_model(0)
    ids = torch.randint(1, 17, (k, 7), generator=torch.Generator().manual_seed(1))
    ids[:, :prompt_len] = ids[0, :prompt_len]  # one prompt, k responses
    attention = torch.ones_like(ids)
    attention[2, 5:] = 0  # one shorter response (right padding)
    mask = attention[:, 1:].double()
    mask[:, : prompt_len - 1] = 0  # only response positions train
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.double)
    with torch.no_grad():
        ref = sequence_logprobs(policy, ids, attention).logprobs  # pi_i
        for p in policy.parameters():  # move theta away from theta_i so that D != 0
            p.add_(perturb * torch.randn_like(p))
    params = list(policy.parameters())

    def per_sample_log_pi():
        return (sequence_logprobs(policy, ids, attention).logprobs * mask).sum(-1)  # [k]

    inputs = LossInputs(sequence_logprobs(policy, ids, attention).logprobs, ref, mask, rewards,
                        rewards > 0, torch.zeros(k, dtype=torch.long))
    grads = torch.autograd.grad(mirror_descent_loss(inputs, tau=tau, length_normalize=False).loss, params)

    rbar = rewards.mean()
    expected = [torch.zeros_like(p) for p in params]
    squared_term = [torch.zeros_like(p) for p in params]
    for j in range(k):
        log_pi_j = per_sample_log_pi()[j]
        d_j = log_pi_j - (ref[j] * mask[j]).sum()
        g_log_pi = torch.autograd.grad(log_pi_j, params, retain_graph=True)
        g_d2 = torch.autograd.grad(d_j**2, params)
        for e, s, a, b in zip(expected, squared_term, g_log_pi, g_d2):
            e -= ((rewards[j] - rbar) * a - tau / 2 * b) / k
            s += tau / 2 * b / k
    # Llama's RMSNorm runs in fp32 even in a float64 model, hence rtol 1e-5 rather than 1e-12.
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    if perturb:  # D != 0: the squared term matters, so dropping it (plain REINFORCE) must not match
        with torch.no_grad():
            assert float((per_sample_log_pi() - (ref * mask).sum(-1)).abs().max()) > 1e-3
        assert max(float(s.abs().max()) for s in squared_term) > 1e-4


def test_rest_ignores_wrong_samples():
    # correct sample 0 has masked log-probs -1, -3 -> NLL token mean 2; wrong sample 1 unused
    logprobs = torch.tensor([[-1.0, -3.0], [-5.0, -5.0]], requires_grad=True)
    inputs = LossInputs(logprobs, logprobs.detach(), torch.ones(2, 2), torch.tensor([1.0, 0.0]),
                        torch.tensor([True, False]), torch.tensor([0, 0]))
    out = rest_loss(inputs)
    assert float(out.loss.detach()) == pytest.approx(2.0)
    out.loss.backward()
    assert logprobs.grad[1].abs().sum() == 0 and logprobs.grad[0].tolist() == [-0.5, -0.5]
    none_correct = LossInputs(logprobs, logprobs.detach(), torch.ones(2, 2), torch.zeros(2),
                              torch.tensor([False, False]), torch.tensor([0, 0]))
    assert float(rest_loss(none_correct).loss.detach()) == 0.0


def test_group_pg_clips_by_hand():
    # advantages: rewards [1, 0] in one group -> [+0.5, -0.5]
    # sample 0: ratio e^0.5 = 1.6487 > 1.2 -> min(1.6487 * 0.5, 1.2 * 0.5) = 0.6
    # sample 1: ratio e^-0.5 = 0.6065 < 0.8 -> min(0.6065 * -0.5, 0.8 * -0.5) = -0.4
    # loss = -(0.6 - 0.4) / 2 = -0.1
    inputs = _inputs([[0.5], [-0.5]], [[0.0], [0.0]], [[1.0], [1.0]], [1.0, 0.0], [True, False], [3, 3])
    out = group_pg_loss(inputs, clip_eps=0.2, scale_by_std=False)
    assert float(out.loss) == pytest.approx(-0.1)
    assert out.metrics["clip_fraction"] == 1.0
    # inside the clip range the objective is ratio * advantage: ratio 1 -> -(0.5 - 0.5) / 2 = 0
    flat = _inputs([[0.0], [0.0]], [[0.0], [0.0]], [[1.0], [1.0]], [1.0, 0.0], [True, False], [3, 3])
    assert float(group_pg_loss(flat, clip_eps=0.2, scale_by_std=False).loss) == pytest.approx(0.0)
    # GRPO scaling: group std of advantages [0.5, -0.5] is 0.5 -> advantages +-1 -> sample 0: 1.2, sample 1: -0.8
    assert float(group_pg_loss(inputs, clip_eps=0.2, scale_by_std=True).loss) == pytest.approx(-0.2, abs=1e-5)


def test_dpo_loss_and_gradient_by_hand():
    # pair 0: policy log-ratios chosen -1 - -2 = 1, rejected -3 - -3 = 0; beta 0.5 -> margin 0.5
    # pair 1: chosen -4 - -3 = -1, rejected -1 - -2 = 1 -> margin 0.5 * (-1 - 1) = -1
    chosen = torch.tensor([-1.0, -4.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-3.0, -1.0], dtype=torch.float64, requires_grad=True)
    inputs = PreferenceInputs(chosen, rejected, torch.tensor([-2.0, -3.0], dtype=torch.float64),
                              torch.tensor([-3.0, -2.0], dtype=torch.float64), torch.tensor([2.0, 4.0]))
    out = dpo_loss(inputs, beta=0.5)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # loss = mean(-log sigmoid(0.5), -log sigmoid(-1)) = mean(0.474077, 1.313262) = 0.893669
    expected = (-math.log(sigmoid(0.5)) - math.log(sigmoid(-1.0))) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.893669, abs=1e-6)
    assert out.metrics["reward_accuracy"] == 0.5 and out.metrics["reward_margin"] == pytest.approx(-0.25)
    out.loss.backward()
    # d/d chosen_p = -(1/P) * beta * sigmoid(-margin_p); d/d rejected_p is its negative
    grad = [-0.5 * 0.5 * sigmoid(-0.5), -0.5 * 0.5 * sigmoid(1.0)]  # [-0.094531, -0.182777]
    assert chosen.grad.tolist() == pytest.approx(grad, abs=1e-12)
    assert rejected.grad.tolist() == pytest.approx([-g for g in grad], abs=1e-12)


def test_dpo_nll_term_by_hand():
    chosen = torch.tensor([-1.0, -4.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-3.0, -1.0], dtype=torch.float64)
    ref = torch.tensor([-1.0, -4.0], dtype=torch.float64), torch.tensor([-3.0, -1.0], dtype=torch.float64)
    inputs = PreferenceInputs(chosen, rejected, *ref, torch.tensor([2.0, 4.0], dtype=torch.float64))
    out = dpo_loss(inputs, beta=0.5, nll_weight=0.4)
    # policy == reference: the DPO term is log 2; NLL per token = mean(1/2, 4/4) = 0.75, weighted 0.4 -> 0.3
    assert out.loss.item() == pytest.approx(math.log(2) + 0.3, abs=1e-12) and out.metrics["nll"] == 0.75
    out.loss.backward()
    # DPO: -(1/2) * 0.5 * sigmoid(0) = -0.125 each; NLL: -0.4 / (2 * tokens) = -0.1 and -0.05
    assert chosen.grad.tolist() == pytest.approx([-0.225, -0.175], abs=1e-12)
