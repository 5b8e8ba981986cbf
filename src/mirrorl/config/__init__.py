"""One typed configuration tree for every mirrorl command, loaded from YAML with dotted overrides.

Every field is documented once, in this package, and validated when the tree is built: an unknown
key or a value of the wrong type or range fails at start with the key, the value and what was
expected. A setting that belongs to one variant (`algo.loss`, `sampler.name`) lives in that
variant's section, so it fails where another variant is chosen. Defaults are the embedded CPU demo
(built-in `chain_sum` task, tiny model trained from scratch); the choices the k1.5 report leaves
open (tau, k, learning rate, steps per iteration, ...) are marked "not given by the report" and
tuned on that task.

Modules: this one holds the tree and its loading; `sampling` the `rollout` section (and
`SamplingConfig.params()`, the runtime `SamplingParams`); `rewards` the reward services' sections,
the sandbox limits and `mirrorl gen-tests`; `base` the common base. The package imports nothing
from mirrorl's runtime packages, only the plain records of `mirrorl.types`.
"""

from __future__ import annotations

import difflib
import functools
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, model_validator

from mirrorl.config.base import Section
from mirrorl.config.distributed import DistributedConfig
from mirrorl.config.rewards import (
    CoTRMConfig,
    GenTestsConfig,
    Limits,
    MatchSettings,
    MathRewardConfig,
    RMTrainConfig,
    ValueHeadRMConfig,
)
from mirrorl.config.sampling import RepeatConfig, SamplingConfig

__all__ = [
    "AlgoConfig", "CheckpointConfig", "CoTRMConfig", "Config", "CurriculumSamplerConfig", "DataConfig",
    "DPOConfig", "DistributedConfig", "EvalConfig", "Long2ShortConfig", "RejectionConfig",
    "GenTestsConfig", "GroupPGConfig", "LengthPenaltyConfig", "Limits", "MatchSettings", "MathRewardConfig",
    "MirrorDescentConfig", "ModelConfig", "PrioritizedSamplerConfig", "RLConfig", "RMTrainConfig", "RepeatConfig",
    "RestConfig", "RewardsConfig", "RunConfig", "SFTConfig", "SamplerConfig", "SamplingConfig", "Section",
    "UniformSamplerConfig", "ValueHeadRMConfig", "dump_config", "load_config", "parse_override",
]


class RunConfig(Section):
    """Where a run writes and how it is seeded."""

    output_dir: Path = Field(Path("runs/demo"), description="Run directory: checkpoints, metrics, plots, summary.")
    seed: int = Field(0, ge=0, description="Seed for data, model initialisation, sampling and training.")
    device: str = Field("auto", description="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; 'auto' is bf16 on CUDA that supports it, fp32 on CPU."
    )
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 leaves torch's default.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files next to metrics.jsonl.")
    wandb: bool = Field(False, description="Also log to Weights & Biases (needs `pip install wandb`).")
    backend: Literal["local", "ray"] = Field(
        "local", description="'local': RL in this process; 'ray': rollout workers and a learner group as Ray actors "
        "(the `distributed` section; `pip install mirrorl[ray]`). SFT and evaluation run in this process.",
    )
    ray_address: str | None = Field(
        None, description="run.backend=ray: address of a running Ray cluster ('auto', 'host:6379'); None starts a "
        "Ray instance on this machine for the run.",
    )


class ModelConfig(Section):
    """The policy: a Hugging Face causal LM, or the built-in tiny model when `path` is empty."""

    path: str | None = Field(None, description="Local HF model directory or hub name; None builds the tiny model.")
    hidden_size: int = Field(128, ge=8, description="Tiny model: hidden size.")
    num_layers: int = Field(4, ge=1, le=64, description="Tiny model: decoder layers.")
    num_heads: int = Field(4, ge=1, description="Tiny model: attention heads (must divide hidden_size).")
    intermediate_size: int = Field(384, ge=8, description="Tiny model: SwiGLU inner size.")
    max_positions: int = Field(512, ge=16, description="Tiny model: maximum sequence length.")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model.num_heads={self.num_heads} must divide model.hidden_size={self.hidden_size}")
        if self.path is not None:
            _only_with(self, "model", ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"),
                       "the built-in tiny model: leave model.path empty")
        return self


def _only_with(section: Section, name: str, fields: tuple[str, ...], what: str) -> None:
    """Refuse a field set away from its default where it has no effect (a dumped config, all defaults, passes)."""
    for field in fields:
        if getattr(section, field) != type(section).model_fields[field].default:
            raise ValueError(f"{name}.{field} applies to {what}")


class DataConfig(Section):
    """Problems for training and evaluation: the built-in task or files (JSONL, Parquet, `datasets`)."""

    train_path: str | None = Field(None, description="Training problems file/dir; None uses the built-in task.")
    eval_path: str | None = Field(None, description="Held-out problems file/dir; None uses the built-in task.")
    prompt_field: str = Field("prompt", min_length=1, description="Column holding the prompt.")
    answer_field: str = Field("answer", min_length=1, description="Column holding the reference answer.")
    solution_field: str = Field("solution", min_length=1, description="Column holding the SFT response.")
    difficulty_field: str = Field("difficulty", min_length=1, description="Column holding the difficulty.")
    tests_field: str = Field(
        "tests", min_length=1, description="Column holding a code problem's tests ([{'input', 'output'}], as "
        "`mirrorl gen-tests` writes them under 'meta'); a row with tests needs no answer.",
    )
    use_chat_template: bool = Field(True, description="Wrap prompts with the tokenizer's chat template.")
    num_sft: int = Field(12000, ge=1, description="Built-in task: long-CoT warm-up problems.")
    num_rl: int = Field(4000, ge=1, description="Built-in task: RL problems (disjoint seed from SFT).")
    num_eval: int = Field(200, ge=1, description="Built-in task: held-out problems (no prompt in train).")
    slip_prob: float = Field(0.08, ge=0, le=1, description="Built-in traces: chance per step of a corrected slip.")
    check_prob: float = Field(0.5, ge=0, le=1, description="Built-in traces: chance of a final check step.")
    trace_style: Literal["long", "short"] = Field(
        "long", description="Built-in traces: 'long' (restated terms, corrected slips, checks) or 'short' (only the "
        "running sums: the short-CoT model of long2short). The same seed gives the same problems in both.",
    )


class SFTConfig(Section):
    """Long-CoT supervised warm-up (k1.5 sec. 2.2); the loss covers response tokens only."""

    steps: int = Field(500, ge=1, description="Optimizer steps.")
    batch_size: int = Field(
        32, ge=1,
        description="Sequences per step. On the demo task 32 reaches the loss and accuracy of 64 in the same "
        "number of steps at half the time, which leaves the 10-minute demo time for RL.",
    )
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (one-cycle: warm-up then cosine decay).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clip.")
    max_len: int = Field(512, ge=8, description="Examples longer than this (prompt + response) are dropped.")
    bucket_window: int = Field(
        1, ge=1,
        description="Length bucketing: examples are sorted by length within windows of this many batches "
        "(1 = plain shuffled batches, padded to the batch's longest). Bucketing makes batches of one "
        "length and so of one difficulty, which on the demo task slowed learning badly (300 steps: final "
        "loss 0.31 with 50, 0.35 with 4, 0.08 with 1), so it is off by default.",
    )
    save_every: int = Field(
        0, ge=0, description="Checkpoint the whole training state (checkpoints/sft) every N steps; 0: only at the "
        "end. A run also checkpoints when stopped by SIGINT/SIGTERM.",
    )


class LengthPenaltyConfig(Section):
    """k1.5 length reward (sec. 2.3.3): weight and warm-up are not given by the report."""

    weight: float = Field(0.0, ge=0, description="Weight of the length reward added to correctness; 0 disables.")
    warmup_iterations: int = Field(0, ge=0, description="Iterations trained without it before it switches on.")


@dataclass(frozen=True)
class _Union:
    """Marks a union of sections told apart by their field `key`; `variants` maps its values to them."""

    key: str
    variants: dict[str, type[Section]]


def _variants(key: str, default: str, *sections: type[Section]) -> Any:
    """A union of sections told apart by their `key` field, which defaults to `default`.

    Each variant holds only its own fields, so a field of another variant fails at load.
    """
    def tag(value: Any) -> str:
        return value.get(key, default) if isinstance(value, dict) else getattr(value, key, default)

    variants = {section.model_fields[key].default: section for section in sections}
    choices = [Annotated[section, Tag(name)] for name, section in variants.items()]
    return Annotated[functools.reduce(operator.or_, choices), Discriminator(tag), _Union(key, variants)]


class _AlgoCommon(Section):
    num_samples: int = Field(8, ge=2, description="k, responses per problem (not given by the report).")
    length_penalty: LengthPenaltyConfig = Field(default_factory=LengthPenaltyConfig)

    def loss_params(self) -> dict[str, Any]:
        """The chosen loss's own settings, as keyword arguments of its function in `mirrorl.algo.losses`."""
        return self.model_dump(exclude={"loss", *_AlgoCommon.model_fields})


class MirrorDescentConfig(_AlgoCommon):
    """k1.5 online policy mirror descent (sec. 2.3.2)."""

    loss: Literal["mirror_descent"] = Field("mirror_descent", description="The policy-optimization objective.")
    tau: float = Field(0.1, gt=0, description="KL weight tau of mirror descent (not given by the report).")
    length_normalize: bool = Field(False, description="Divide each squared residual by its token count.")


class RestConfig(_AlgoCommon):
    """ReST-style positive-only fine-tuning, the report's baseline."""

    loss: Literal["rest"] = Field("rest", description="The policy-optimization objective.")


class GroupPGConfig(_AlgoCommon):
    """A group-baseline policy gradient with a PPO-clipped ratio (GRPO/RLOO-like)."""

    loss: Literal["group_pg"] = Field("group_pg", description="The policy-optimization objective.")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip.")
    scale_by_std: bool = Field(False, description="Divide advantages by the group's std (GRPO).")


class UniformSamplerConfig(Section):
    """Every training problem equally likely (k1.5 sec. 2.3.4's baseline)."""

    name: Literal["uniform"] = Field("uniform", description="Problem sampler.")


class CurriculumSamplerConfig(Section):
    """Curriculum sampling (k1.5 sec. 2.3.4): easy (or all) problems first, then only hard ones."""

    name: Literal["curriculum"] = Field("curriculum", description="Problem sampler.")
    switch_iteration: int = Field(10, ge=0, description="Iteration from which only hard problems.")
    hard_min_difficulty: float = Field(3.0, description="Difficulty at which a problem is hard.")
    first_phase: Literal["easy", "all"] = Field("easy", description="Pool before the switch.")


class PrioritizedSamplerConfig(Section):
    """Prioritized sampling (k1.5 sec. 2.3.4): problem i drawn with probability proportional to 1 - s_i."""

    name: Literal["prioritized"] = Field("prioritized", description="Problem sampler.")
    initial_success: float = Field(0.0, ge=0, le=1, description="s_i before a problem is seen.")
    ema: float | None = Field(None, gt=0, le=1, description="EMA factor; None is a running mean.")
    min_weight: float = Field(0.0, ge=0, le=1, description="Floor of 1 - s_i.")


AlgoConfig = _variants("loss", "mirror_descent", MirrorDescentConfig, RestConfig, GroupPGConfig)
SamplerConfig = _variants("name", "uniform", UniformSamplerConfig, CurriculumSamplerConfig, PrioritizedSamplerConfig)


class RLConfig(Section):
    """The RL iteration loop: sample problems, roll out, reward, optimize, log, checkpoint."""

    init_from: str | None = Field(None, description="Policy to start from; None uses the SFT output of the run.")
    iterations: int = Field(140, ge=1, description="Mirror-descent iterations; pi_i is refreshed each one.")
    problems_per_iteration: int = Field(
        16, ge=1, description="New problems per iteration (each gets k samples); with partial rollouts the "
        "trajectories continued from the replay buffer come on top.",
    )
    grad_steps: int = Field(2, ge=1, description="Optimizer steps per iteration (all after the first off-policy).")
    lr: float = Field(3e-5, gt=0, description="Learning rate (not given by the report).")
    lr_warmup_iterations: int = Field(0, ge=0, description="Linear LR warm-up over the first N iterations.")
    reset_optimizer: bool = Field(
        False,
        description="Fresh AdamW state each iteration, as the report does. Off by default: with a few steps "
        "per iteration a fresh Adam takes sign-like steps of size lr on every weight, which on the demo "
        "task lowered accuracy where the persistent state did not.",
    )
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clip.")
    logprob_chunk_size: int = Field(2048, ge=1, description="Rows per chunk of the log-prob head (memory bound).")
    save_every: int = Field(
        0, ge=0, description="Checkpoint the whole training state (checkpoints/rl) every N iterations; 0: only at "
        "the end. A run also checkpoints when stopped by SIGINT/SIGTERM or by a reward that scored no sample.",
    )
    reward: str = Field("chain_sum", description="Reward name from the registry, or 'module:function'.")
    segment_budget: int = Field(
        0, ge=0, description="Partial rollouts (k1.5 sec. 4): new tokens per trajectory per iteration; an unfinished "
        "trajectory waits in the replay buffer and continues next iteration, queued before that iteration's new "
        "problems (a freed engine slot takes the next queued trajectory at once). 0: full rollouts.",
    )
    off_policy_correction: Literal["none", "truncated_is"] = Field(
        "truncated_is", description="Partial rollouts: weight each sample by min(is_cap, pi_i / mu) over the tokens "
        "earlier policies mu sampled (truncated importance sampling); 'none' trains on them as if pi_i had. On the "
        "demo task with segment_budget=32, 60 iterations from one SFT policy (two seeds): full rollouts 0.853 / 0.860 "
        "pass@1, truncated_is 0.821 / 0.788, none 0.724 / 0.566 (the policy moves fastest on exactly the tokens "
        "that decide the reward, so stale segments over-represent the mistakes it is unlearning).",
    )
    is_cap: float = Field(1.0, gt=0, description="Truncation of the off-policy weights.")
    train_tokens: Literal["all", "newest"] = Field(
        "all", description="Partial rollouts: train on every response token, or only on the segment generated "
        "by the current policy.",
    )
    log_rollouts_every: int = Field(
        1, ge=0, description="Write an iteration's samples (prompt, response, reference, rewards, advantage, ...) "
        "to rollouts/{iteration}.jsonl every N iterations; 0 never.",
    )
    log_rollout_groups: int = Field(8, ge=1, description="Groups written per logged iteration (the first drawn).")
    log_logprobs: bool = Field(False, description="Also write each response token's log-prob and text.")

    @model_validator(mode="after")
    def _partial_settings_need_a_budget(self) -> RLConfig:
        if self.segment_budget == 0:
            _only_with(self, "rl", ("off_policy_correction", "is_cap", "train_tokens"),
                       "partial rollouts only: set rl.segment_budget > 0")
        return self


class EvalConfig(Section):
    """Held-out evaluation: pass@k, maj@k, greedy accuracy, mean response length, tokens per correct answer."""

    num_samples: int = Field(4, ge=1, description="Samples per problem (n of pass@k; pass@1 is averaged over them).")
    pass_k: list[int] | None = Field(None, min_length=1, description="The k of pass@k and maj@k, each at most "
                                     "num_samples; None: 1, 2, 4, ... up to num_samples.")
    temperature: float | None = Field(None, ge=0, description="Sampling temperature; None uses rollout's.")
    max_new_tokens: int | None = Field(None, ge=1, description="Longest response; None uses rollout's.")
    greedy: bool = Field(True, description="Also report greedy accuracy.")
    checkpoint: str | None = Field(None, description="`mirrorl eval`: model directory to evaluate.")

    @model_validator(mode="after")
    def _k_within_samples(self) -> EvalConfig:
        for k in self.pass_k or ():
            if not 1 <= k <= self.num_samples:
                raise ValueError(f"eval.pass_k holds {k}: each k must be in 1..eval.num_samples={self.num_samples}")
        return self

    def ks(self) -> list[int]:
        """The k of pass@k and maj@k."""
        return self.pass_k or [2**i for i in range(self.num_samples.bit_length()) if 2**i <= self.num_samples]


class DPOConfig(SFTConfig):
    """DPO toward short responses (k1.5 sec. 2.4): `mirrorl dpo`. The optimizer settings are SFT's;
    the policy starts from `init_from`, which is also the frozen reference."""

    init_from: str | None = Field(None, description="Policy and reference; None: the run's rl/final, else sft/final, "
                                  "else model.path.")
    pairs_path: str | None = Field(None, description="JSONL of {prompt, chosen, rejected} rows; None samples the pairs "
                                   "from the policy on the training problems.")
    num_problems: int = Field(512, ge=1, description="Sampled pairs: the first N training problems.")
    num_samples: int = Field(8, ge=2, description="Sampled pairs: responses per problem.")
    longer_ratio: float = Field(1.5, ge=1, description="A correct response this many times longer than the shortest "
                                "correct one is a negative (the report's 1.5).")
    max_pairs_per_problem: int = Field(4, ge=1, description="Pairs kept per problem (the positive against its first "
                                       "negatives in sample order).")
    beta: float = Field(0.1, gt=0, description="DPO beta: the strength of the implicit KL to the reference.")
    nll_weight: float = Field(0.0, ge=0, description="Weight of the chosen responses' per-token NLL added to the DPO "
                              "loss (RPO); 0 is plain DPO.")
    steps: int = Field(60, ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Pairs per step.")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate (one-cycle).")


class RejectionConfig(Section):
    """Shortest rejection sampling (k1.5 sec. 2.4): `mirrorl shortest-rs` samples n responses per training
    problem and keeps the shortest correct one that finished normally, as SFT rows."""

    model: str | None = Field(None, description="Model to sample from; None: the run's rl/final.")
    num_problems: int = Field(1000, ge=1, description="The first N training problems.")
    num_samples: int = Field(8, ge=1, description="Responses per problem.")


class Long2ShortConfig(Section):
    """`mirrorl long2short RUN_DIR`: every long2short method from one long model, evaluated with one protocol
    (`eval`, on the held-out split) into the report's Figure 7. Sampling for rejection sampling and DPO pairs
    follows the evaluation's temperature and length; long2short RL is the `rl`, `algo` and `rollout` sections."""

    long_model: str | None = Field(None, description="The long-CoT model; None: RUN_DIR/rl/final.")
    short_model: str | None = Field(None, description="The short-CoT model to merge with; None: SFT of the long model "
                                    "on the built-in task's short traces for `short_sft_steps`.")
    short_sft_steps: int = Field(150, ge=1, description="Steps of that SFT (the other settings are `sft`'s).")
    merge_weight: float = Field(0.5, gt=0, lt=1, description="Weight of the long model in the merge.")
    rs_from: Literal["merged", "long"] = Field("merged", description="Model fine-tuned on the shortest rejection "
                                                "samples (which are drawn from the merged model).")
    rs_sft_steps: int = Field(60, ge=1, description="Steps of that SFT.")
    sft_lr: float = Field(3e-4, gt=0, description="Peak learning rate of both SFTs (they start from a trained model; "
                          "`sft.lr` is for training from scratch).")
    methods: list[Literal["merge", "merge_rs", "dpo", "rl"]] = Field(
        ["merge", "merge_rs", "dpo", "rl"], description="Methods to run (the long and short models are always rows).")


class RewardsConfig(Section):
    """Reward services (k1.5 sec. 2.3.5)."""

    math: MathRewardConfig = Field(default_factory=MathRewardConfig, description="Rule-based math answer verifier.")
    cot_rm: CoTRMConfig = Field(default_factory=CoTRMConfig, description="Reward 'cot_rm': the Chain-of-Thought judge.")
    value_rm: ValueHeadRMConfig = Field(default_factory=ValueHeadRMConfig, description="Reward 'value_rm'.")


class CheckpointConfig(Section):
    """Which checkpoints a run keeps (in run.output_dir/checkpoints/<phase>; when to save: `sft.save_every`,
    `rl.save_every`). `mirrorl sft|rl|demo --resume` continues from the newest valid one."""

    keep_last: int = Field(3, ge=1, description="Keep the newest N checkpoints of a phase.")
    keep_every: int = Field(0, ge=0, description="Also keep every checkpoint whose step is a multiple of N; 0: none.")


class Config(Section):
    """The whole tree; YAML recipes set any subset of it."""

    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rollout: SamplingConfig = Field(default_factory=SamplingConfig)
    algo: AlgoConfig = Field(default_factory=MirrorDescentConfig, description="Objective: set algo.loss first.")
    sampler: SamplerConfig = Field(default_factory=UniformSamplerConfig, description="Set sampler.name first.")
    rl: RLConfig = Field(default_factory=RLConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    rejection: RejectionConfig = Field(default_factory=RejectionConfig)
    long2short: Long2ShortConfig = Field(default_factory=Long2ShortConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    rm: RMTrainConfig = Field(default_factory=RMTrainConfig, description="`mirrorl train-rm`: a value-head RM.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="run.backend=ray.")

    @model_validator(mode="after")
    def _distributed_needs_ray(self) -> Config:
        if self.run.backend == "local":
            _only_with(self.run, "run", ("ray_address",), "run.backend=ray")
            _only_with(self.distributed, "distributed", tuple(DistributedConfig.model_fields), "run.backend=ray")
        return self


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"config override {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'algo.tau=0.05' -> ('algo.tau', 0.05); the value is read as YAML ('null', 'true', '[1,2]')."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"config override {text!r}: expected key=value, e.g. algo.tau=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _field(section: type[BaseModel] | None, name: str) -> tuple[type[BaseModel] | None, _Union | None]:
    """The section a field of `section` holds (None for a value), and its union marker if it is one."""
    info = section.model_fields.get(name) if section is not None else None
    if info is None:
        return None, None
    union = next((m for m in info.metadata if isinstance(m, _Union)), None)
    annotation = info.annotation
    return (annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None), union


def _describe(err: ValidationError) -> str:
    """One line for the first error, with the key as the user writes it (pydantic adds union tags)."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if not loc:  # the whole tree's own check
        return f"config: {first['msg'].removeprefix('Value error, ')}"
    parts: list[str] = []
    parent: type[BaseModel] | None = None  # the section whose field the last part names
    section: type[BaseModel] | None = Config
    variant: tuple[str, str, _Union] | None = None  # (dotted union key, its value in force, the union)
    while loc:
        parts.append(loc.pop(0))
        parent = section
        section, union = _field(parent, parts[-1])
        if union is not None and loc and loc[0] in union.variants:
            tag = loc.pop(0)
            variant, section = (".".join([*parts, union.key]), tag, union), union.variants[tag]
    key, name = ".".join(parts), parts[-1]
    if first["type"] == "extra_forbidden":
        if variant is not None:
            union_key, tag, union = variant
            owners = [other for other, s in union.variants.items() if name in s.model_fields]
            if owners:
                return f"config {key} does not apply to {union_key}={tag} (it is a setting of {union_key}={owners[0]})"
        close = difflib.get_close_matches(name, list(parent.model_fields) if parent is not None else [], n=1)
        hint = f" (did you mean {'.'.join([*parts[:-1], close[0]])!r}?)" if close else ""
        return f"unknown config key {key!r}{hint}"
    if first["type"] == "union_tag_invalid":  # `algo.loss=ppo`
        union = _field(parent, name)[1]
        assert union is not None
        names = [repr(n) for n in union.variants]
        expected = f"{', '.join(names[:-1])} or {names[-1]}"
        return f"config {key}.{union.key}={first['ctx']['tag']!r}: Input should be {expected}"
    if first["type"] == "model_type":  # a value where a section belongs: `algo=3`
        return (f"config {key}={first.get('input')!r}: {key!r} is a section, not a value; "
                f"set its keys, e.g. {key}.<key>=...")
    if first["type"] == "value_error" and isinstance(first.get("input"), dict):  # a section's own check
        return f"config {key}: {first['msg'].removeprefix('Value error, ')}"
    return f"config {key}={first.get('input')!r}: {first['msg']}"


def _read_yaml(path: Path) -> dict[str, Any]:
    """A recipe file as a dict; ValueError naming the file (and line) when it cannot be one."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"config file {path} is a directory, not a YAML file") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ValueError(f"config file {path}: cannot read it ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None)
        raise ValueError(f"config file {path}{where}: malformed YAML" + (f" ({problem})" if problem else "")) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"config file {path}: expected a mapping of sections, got {type(loaded).__name__}")
    return loaded or {}


def load_config(path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build the tree from a YAML recipe (optional) and `key=value` overrides, validating it.

    Raises ValueError with one line naming the file, the key, the value and the expectation.
    """
    tree = _read_yaml(path) if path is not None else {}
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        source = f"{path}: " if path is not None else ""
        raise ValueError(source + _describe(err)) from None


def dump_config(config: Config) -> str:
    """The tree as YAML, for the run directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
