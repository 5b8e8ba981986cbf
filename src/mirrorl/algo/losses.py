"""Policy-optimization losses: k1.5 online mirror descent (sec. 2.3.2) and two ablation baselines.

Mirror descent. With k samples per problem drawn from pi_i, reward r_j and the sequence-level
log-ratio D_j = sum_t log pi_theta(y_jt) - log pi_i(y_jt), minimise
    L = mean_j (r_j - rbar - tau * D_j)^2 / (2 * tau)
where rbar, the mean reward of the group, approximates tau log Z. Its gradient is exactly minus
the report's eq. 3:  -(1/k) sum_j [ (r_j - rbar) grad log pi_theta(y_j) - (tau/2) grad D_j^2 ].
`length_normalize` divides each squared residual by the sample's token count (OpenKimi's choice);
the default is the report's sequence-sum form.

DPO (Rafailov et al. 2023), the report's second long2short method (sec. 2.4): with sequence
log-probs of a preferred response y_w and a rejected one y_l under the policy and a frozen
reference, minimise  -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]).
An optional negative log-likelihood of y_w per token, weighted by `nll_weight` (Pang et al. 2024,
"Iterative Reasoning Preference Optimization"), keeps the preferred responses likely: pure DPO can
lower both responses' log-probs as long as their gap grows.

Baselines: `rest_loss` (ReST-style: fine-tune on correct responses only, never pushing wrong ones
down) and `group_pg_loss` (a group-mean baseline with a PPO-clipped token ratio, GRPO/RLOO-like).

Legend: B samples in the batch (whole groups), T response positions, P preference pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LossInputs:
    logprobs: Tensor  # [B, T] log pi_theta, with grad
    ref_logprobs: Tensor  # [B, T] log pi_i (the sampling policy of this iteration), no grad
    mask: Tensor  # [B, T] 1.0 where the token trains
    rewards: Tensor  # [B] correctness + weighted length reward
    correct: Tensor  # [B] bool, the verifier's verdict
    group_ids: Tensor  # [B] the k samples of one problem share an id
    weights: Tensor | None = None  # [B] per-sample weight (off-policy correction), no grad; None = 1


def stale_weights(ref_logprobs: Tensor, behaviour_logprobs: Tensor, stale: Tensor, cap: float) -> Tensor:
    """Truncated importance weights of partial rollouts' older segments: [B].

    A continued trajectory's earlier segments were sampled by earlier policies mu, not by pi_i, so
    its weight in an expectation under pi_i is prod over those tokens of pi_i / mu, i.e.
    exp(sum of ref - behaviour log-probs where `stale`); the current segment needs none. Truncated
    at `cap` to bound the variance (truncated importance sampling).
    """
    log_weight = ((ref_logprobs - behaviour_logprobs) * stale).sum(-1)  # [B]
    return log_weight.exp().clamp(max=cap)


def _per_sample(values: Tensor, inputs: LossInputs) -> Tensor:
    """`values` [B] times the sample weights, when there are any."""
    return values if inputs.weights is None else values * inputs.weights


@dataclass
class LossOutput:
    loss: Tensor  # scalar: a mean over `count` units
    metrics: dict[str, float]
    count: float  # what the mean divides by (samples, or weighted tokens): a learner rank that holds part of a
    # mini-batch rescales its loss by it so that the ranks' averaged gradient is the whole mini-batch's


def group_mean(values: Tensor, group_ids: Tensor) -> Tensor:
    """Mean of `values` [B] over each sample's group, broadcast back to [B]."""
    _, group = torch.unique(group_ids, return_inverse=True)  # [B]
    sums = torch.zeros(int(group.max()) + 1, device=values.device).index_add(0, group, values.float())  # [G]
    counts = torch.bincount(group).float()  # [G]
    return (sums / counts)[group]  # [B]


def _kl(inputs: LossInputs) -> float:
    """Token mean of the k3 estimator of KL(pi_i || pi_theta) over trained tokens."""
    with torch.no_grad():
        diff = inputs.ref_logprobs - inputs.logprobs  # [B, T]
        k3 = (diff.exp() - diff - 1) * inputs.mask  # [B, T]
        return float(k3.sum() / inputs.mask.sum().clamp(min=1))


def mirror_descent_loss(inputs: LossInputs, *, tau: float, length_normalize: bool) -> LossOutput:
    """k1.5 surrogate: mean_j (r_j - rbar - tau D_j)^2 / (2 tau)."""
    log_ratio = ((inputs.logprobs - inputs.ref_logprobs) * inputs.mask).sum(-1)  # [B] D_j
    advantage = inputs.rewards - group_mean(inputs.rewards, inputs.group_ids)  # [B] r_j - rbar
    residual = (advantage - tau * log_ratio) ** 2  # [B]
    if length_normalize:
        residual = residual / inputs.mask.sum(-1).clamp(min=1)  # [B]
    loss = _per_sample(residual, inputs).mean() / (2 * tau)
    return LossOutput(loss, {
        "loss": float(loss.detach()), "log_ratio_mean": float(log_ratio.detach().mean()),
        "log_ratio_abs_mean": float(log_ratio.detach().abs().mean()), "kl": _kl(inputs),
        "advantage_abs_mean": float(advantage.abs().mean()),
    }, count=float(len(residual)))


def rest_loss(inputs: LossInputs) -> LossOutput:
    """ReST-style baseline: token-mean NLL of the correct samples; wrong ones contribute nothing."""
    keep = inputs.mask * _per_sample(inputs.correct.float(), inputs).unsqueeze(-1)  # [B, T]
    loss = -(inputs.logprobs * keep).sum() / keep.sum().clamp(min=1)
    return LossOutput(loss, {
        "loss": float(loss.detach()), "kl": _kl(inputs), "used_fraction": float(inputs.correct.float().mean()),
    }, count=float(keep.sum()))


def group_pg_loss(inputs: LossInputs, *, clip_eps: float, scale_by_std: bool) -> LossOutput:
    """Group-baseline policy gradient with a PPO-clipped ratio against pi_i (GRPO/RLOO-like)."""
    advantage = inputs.rewards - group_mean(inputs.rewards, inputs.group_ids)  # [B]
    if scale_by_std:
        spread = group_mean(advantage**2, inputs.group_ids).sqrt()  # [B] group std
        advantage = advantage / (spread + 1e-6)  # [B]
    ratio = (inputs.logprobs - inputs.ref_logprobs).exp()  # [B, T]
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps)  # [B, T]
    surrogate = torch.minimum(ratio * advantage[:, None], clipped * advantage[:, None])  # [B, T]
    per_sample = (surrogate * inputs.mask).sum(-1) / inputs.mask.sum(-1).clamp(min=1)  # [B]
    loss = -_per_sample(per_sample, inputs).mean()
    with torch.no_grad():
        clip_fraction = ((ratio - clipped).abs() > 0).float().mul(inputs.mask).sum() / inputs.mask.sum().clamp(min=1)
    return LossOutput(loss, {"loss": float(loss.detach()), "kl": _kl(inputs), "clip_fraction": float(clip_fraction)},
                      count=float(len(per_sample)))


@dataclass
class PreferenceInputs:
    chosen: Tensor  # [P] sum of log pi over the preferred response's tokens, with grad
    rejected: Tensor  # [P] the same for the rejected response
    ref_chosen: Tensor  # [P] the frozen reference's sums, no grad
    ref_rejected: Tensor  # [P]
    chosen_tokens: Tensor  # [P] the preferred responses' token counts


def dpo_loss(inputs: PreferenceInputs, *, beta: float, nll_weight: float = 0.0) -> LossOutput:
    """DPO: mean_p -log sigmoid(beta * margin_p), where margin_p is the policy's log-ratio to the
    reference on the chosen response minus that on the rejected one; plus `nll_weight` times the
    chosen responses' mean per-token negative log-likelihood.

    The DPO term's gradient is -beta * sigmoid(-margin) * (grad log pi(y_w) - grad log pi(y_l)):
    pairs the policy already orders well (large margin) weigh little.
    """
    chosen_reward = beta * (inputs.chosen - inputs.ref_chosen)  # [P] implicit rewards
    rejected_reward = beta * (inputs.rejected - inputs.ref_rejected)  # [P]
    margin = chosen_reward - rejected_reward  # [P]
    nll = -(inputs.chosen / inputs.chosen_tokens).mean()
    loss = -torch.nn.functional.logsigmoid(margin).mean() + nll_weight * nll
    return LossOutput(loss, {
        "loss": float(loss.detach()), "nll": float(nll.detach()), "reward_margin": float(margin.detach().mean()),
        "reward_accuracy": float((margin.detach() > 0).float().mean()),
        "chosen_reward": float(chosen_reward.detach().mean()),
        "rejected_reward": float(rejected_reward.detach().mean()),
    }, count=float(len(margin)))


# name -> loss; each takes its own settings as keywords (`mirrorl.config`'s `algo.loss_params()`)
LOSSES: dict[str, Callable[..., LossOutput]] = {
    "mirror_descent": mirror_descent_loss,
    "rest": rest_loss,
    "group_pg": group_pg_loss,
}
