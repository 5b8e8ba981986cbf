"""The records that flow through mirrorl, and the three seams the RL loop and evaluation receive.

A Problem is one prompt with a verifiable reference answer (k1.5 sec. 2.1). A Sample is one
response drawn from the policy for it; the k samples of one problem form a group, the unit of the
mean-reward baseline of online policy mirror descent (sec. 2.3.2) and of the length penalty
(sec. 2.3.3).

The seams are protocols, so another backend plugs in without touching the loop:
- `Generator`: extends token sequences under some weights (our engine in-process; a Ray worker or
  an inference server elsewhere) and says which weight version produced them;
- `BatchReward`: scores (response, problem) pairs in one call; None means the scorer failed;
- `Trainer`: one iteration's optimizer steps on a `TrainBatch`, and the weights to publish.
Their parameters are frozen records of plain numbers (`SamplingParams`, `RepeatRule`), made from the
config by `mirrorl.config`; nothing here imports the rest of mirrorl.

Legend: N samples of a batch, T tokens of the longest (prompt + response).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class Problem:
    """One prompt with its reference answer.

    `difficulty` feeds the curriculum sampler (higher is harder); `solution` is an optional
    long-CoT response used by supervised warm-up; `meta` carries task-specific fields.
    """

    id: str
    prompt: str
    answer: str
    difficulty: float | None = None
    solution: str | None = None
    task: str = "chain_sum"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One sampled response to a problem, with everything the loss and the metrics need."""

    problem_index: int  # index into the problem list the sampler draws from
    prompt_ids: list[int]
    response_ids: list[int]
    finish_reason: str  # "stop" | "length" | "budget" | "repeat"
    group_id: int = 0  # the k samples of one draw of a problem share it
    versions: list[int] = field(default_factory=list)  # per response token: the iteration whose policy made it
    logprobs: list[float] = field(default_factory=list)  # per response token: log-prob under that policy
    text: str = ""
    correct: bool = False
    reward: float = 0.0  # correctness reward (before the length reward)
    length_reward: float = 0.0


@dataclass(frozen=True)
class TestCase:
    """One stdin of a code problem and the stdout expected for it."""

    __test__ = False  # not a pytest class

    input: str
    output: str


# Generation


@dataclass(frozen=True)
class RepeatRule:
    """Repeat detection: fire when the tail repeats a unit of at most `max_period` tokens
    `min_repeats` times over at least `min_span` tokens (see `mirrorl.rollout.repeat`)."""

    max_period: int
    min_repeats: int
    min_span: int


@dataclass(frozen=True)
class SamplingParams:
    """How a generator draws tokens; `repeat` None switches repeat detection off."""

    temperature: float  # 0 is greedy
    top_p: float
    top_k: int  # 0: no top-k filter
    max_new_tokens: int  # longest response, earlier segments included
    batch_size: int  # sequences decoded together
    stop_token_ids: tuple[int, ...]  # besides EOS
    repeat: RepeatRule | None


@dataclass
class Request:
    """One sequence to extend: a prompt and, for a continued partial rollout, its response so far."""

    prompt_ids: list[int]
    prefix_ids: list[int] = field(default_factory=list)  # response tokens generated in earlier segments
    budget: int | None = None  # new tokens allowed in this call (segment budget); None = no budget


@dataclass
class Completion:
    token_ids: list[int]  # tokens generated in this call (the stop token included when it stopped)
    logprobs: list[float]  # log pi(token) under the weights that generated it, one per token
    finish_reason: str  # "stop" | "length" | "budget" | "repeat"


@dataclass(frozen=True)
class GenerateResult:
    """The completions of one `generate` call, in request order, and what the call cost."""

    completions: list[Completion]
    weight_version: int  # the version of the weights that generated every token of this call
    new_tokens: int
    idle_fraction: float  # slot-steps spent on free slots / all slot-steps (0 where there are no slots)
    metrics: dict[str, float] = field(default_factory=dict)  # the generator's own figures to log (per worker, sync)


class Generator(Protocol):
    """Extends requests under the weights of version `update_weights` last set."""

    def generate(self, requests: Sequence[Request], params: SamplingParams, seed: int) -> GenerateResult:
        """Extend every request; seeded, so a call can be repeated exactly on the same hardware."""
        ...

    def update_weights(self, version: int, state: Mapping[str, Tensor]) -> None:
        """Generate with `state` (parameter name -> tensor) from now on, as weight version `version`.
        A generator colocated with the trainer (sharing its parameters) only records the version."""
        ...


class PendingGenerate(Protocol):
    """A `generate` call under way."""

    def result(self) -> GenerateResult:
        """Wait for it; the completions in request order."""
        ...


class AsyncGenerator(Generator, Protocol):
    """A generator whose calls can run while the caller does other work (rollout workers in other processes)."""

    def submit(self, requests: Sequence[Request], params: SamplingParams, seed: int) -> PendingGenerate:
        """Start `generate(requests, params, seed)` under the current weights and return at once."""
        ...


# Rewards


class BatchReward(Protocol):
    """Scores responses to their problems in one call, in order: a float, or None when the scorer
    itself failed (a crashed sandbox, a timed-out verifier): such a sample is dropped, never scored 0."""

    def __call__(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[float | None]: ...


# Training


@dataclass
class TrainBatch:
    """One iteration's samples as padded tensors: all an optimize phase needs (k1.5 sec. 2.3.2)."""

    input_ids: Tensor  # [N, T] prompt + response, right-padded
    attention_mask: Tensor  # [N, T]
    loss_mask: Tensor  # [N, T-1] 1.0 under the response tokens that train (position t predicts token t+1)
    behaviour_logprobs: Tensor  # [N, T-1] log-prob of each response token under the policy that sampled it
    older: Tensor  # [N, T-1] 1.0 under response tokens sampled by an earlier policy than pi_i
    rewards: Tensor  # [N] correctness + weighted length reward
    correct: Tensor  # [N] bool
    group_ids: Tensor  # [N]
    minibatches: list[Tensor]  # rows of each optimizer step, whole groups each

    def to(self, device: Any) -> TrainBatch:
        moved = {name: value.to(device) for name, value in vars(self).items() if name != "minibatches"}
        return TrainBatch(**moved, minibatches=[rows.to(device) for rows in self.minibatches])


@dataclass
class StepMetrics:
    """What one optimize phase reports."""

    loss: dict[str, float]  # the loss's own figures and grad_norm, averaged over the optimizer steps
    entropy: float  # token mean over the trained tokens, of the policy as it was being updated
    stale_weight_mean: float | None  # mean off-policy weight; None when no sample had stale tokens
    # mean |log pi_i| difference between the trainer's forward and the generator's log-probs of the tokens
    # pi_i sampled (first mini-batch, before any step); None when there were none
    logprob_gap: float | None = None
    # batch row -> off-policy weight of the samples with tokens from earlier policies (partial rollouts)
    sample_weights: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        optional = {"stale_weight_mean": self.stale_weight_mean, "logprob_gap": self.logprob_gap}
        return {**self.loss, "entropy": self.entropy, **{k: v for k, v in optional.items() if v is not None}}


class Trainer(Protocol):
    """The learner: optimizer steps on the policy, its state, and the weights generators load."""

    def train_step(self, batch: TrainBatch, lr: float) -> StepMetrics:
        """One iteration's optimize phase: an optimizer step per mini-batch of `batch`."""
        ...

    def reset_optimizer(self) -> None:
        """A fresh optimizer state (k1.5 resets it at the start of each iteration)."""
        ...

    def state_dict(self) -> Mapping[str, Tensor]:
        """The policy's weights, parameter name -> tensor: what `Generator.update_weights` receives."""
        ...

    def save(self, directory: Path) -> None:
        """Write the policy (Hugging Face format) and the optimizer state into a checkpoint directory."""
        ...

    def export(self, directory: Path) -> None:
        """Write the policy alone, in Hugging Face format (a run's final model)."""
        ...

    def load_optimizer(self, directory: Path) -> None:
        """Read the optimizer state a `save` wrote (the weights come with the policy when it is opened)."""
        ...
