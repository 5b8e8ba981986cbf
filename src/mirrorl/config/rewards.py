"""Config sections of the reward services (k1.5 sec. 2.3.5) and of test generation.

The math verifier, the two reward models (`rewards.*`), training a value-head reward model
(`rm`), the code sandbox's limits and `mirrorl gen-tests`. The services themselves live in
`mirrorl.rewards`; these sections only describe and validate their settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mirrorl.config.base import Section
from mirrorl.config.sampling import SamplingConfig

Strategy = Literal["final_answer", "boxed", "answer_phrase", "math_verify", "last_number", "whole"]
AnswerFormat = Literal["latex", "expr"]


class MatchSettings(BaseModel):
    """How answers are found and compared. Datasets differ, so a call may override these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    response_strategies: tuple[Strategy, ...] = Field(
        default=("final_answer", "math_verify"),
        min_length=1,
        description="Where the response's answer is looked for, first success wins: 'boxed' (last "
        "\\boxed{}), 'answer_phrase' ('the answer is X'), 'final_answer' (the later of those two), "
        "'math_verify' (math-verify's extractor over the text), 'last_number', 'whole' (the text is the answer).",
    )
    reference_strategies: tuple[Strategy, ...] = Field(
        default=("boxed", "whole"),
        min_length=1,
        description="Same, for the reference: a boxed answer if it has one, else the whole text.",
    )
    answer_formats: tuple[AnswerFormat, ...] = Field(
        default=("latex", "expr"),
        min_length=1,
        description="math-verify extraction targets: 'latex' (math environments), 'expr' (plain numbers "
        "and expressions such as 1,000.5 or 2/3). Use ['expr'] for plain-number datasets (GSM8K).",
    )
    float_rounding: int = Field(6, ge=0, le=15, description="Decimal places floats are rounded to before comparing.")
    strict: bool = Field(True, description="False matches variables by position (f(x) = f(y)) and sets with tuples.")
    allow_set_relation_comp: bool = Field(
        False, description="Also accept an inequality for an interval reference (-2 <= x <= 7 for [-2, 7])."
    )


class MathRewardConfig(BaseModel):
    """The math verifier: answer matching, worker pool, deadline, and the guards on inputs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    match: MatchSettings = Field(default_factory=MatchSettings, description="Answer finding and comparison.")
    timeout_seconds: float = Field(
        4.0, gt=0, le=600, description="Hard deadline of one check: past it the worker is killed, the call is an error."
    )
    library_timeout_seconds: int = Field(
        1, ge=0, description="math-verify's own timeout of each parse and comparison inside a worker (whole "
        "seconds, SIGALRM); it fires before the hard deadline and keeps the worker. 0 leaves only the deadline.",
    )
    num_workers: int = Field(0, ge=0, le=256, description="Worker processes; 0 means one per CPU core.")
    start_method: Literal["forkserver", "spawn"] = Field(
        "forkserver", description="How workers start; both are safe with torch threads (no fork of a threaded parent)."
    )
    worker_memory_mb: int = Field(2048, ge=0, description="Address-space limit of a worker (MiB); 0 for none.")
    max_response_chars: int = Field(
        100_000, ge=1000, description="Only the last this-many characters of a response or reference are searched."
    )
    max_answer_chars: int = Field(1000, ge=10, description="Longer extracted answers are refused (error).")
    max_answer_digits: int = Field(500, ge=1, description="Answers with a longer run of digits are refused (error).")
    max_nesting_depth: int = Field(
        10, ge=1, le=50, description="Answers with brackets nested deeper are refused (parsing is exponential in it)."
    )
    max_exponent: int = Field(
        10**6, ge=1, description="Integer power chains such as 2^{2^{100}} whose exponent exceeds this are refused."
    )

    @model_validator(mode="after")
    def _library_timeout_fires_first(self) -> MathRewardConfig:
        if self.library_timeout_seconds >= self.timeout_seconds:
            raise ValueError(
                f"library_timeout_seconds={self.library_timeout_seconds} must be below timeout_seconds="
                f"{self.timeout_seconds:g}: math-verify's own timeout should fire before the worker is killed "
                "(raise timeout_seconds or set library_timeout_seconds=0)"
            )
        return self



COT_TEMPLATE = (
    "You are checking a response to a question against the reference answer.\n\n"
    "Question:\n{question}\n\nReference answer:\n{reference}\n\nResponse:\n{response}\n\n"
    "Is the final answer of the response equivalent to the reference answer (the same value, in any "
    "form)? Think step by step, then end with one line of JSON: {\"correct\": true} or {\"correct\": false}."
)
VALUE_HEAD_TEMPLATE = "Question: {question}\nReference answer: {reference}\nResponse: "


def _require_placeholders(template: str, names: tuple[str, ...]) -> str:
    missing = [name for name in names if "{" + name + "}" not in template]
    if missing:
        raise ValueError(f"template lacks {', '.join('{' + n + '}' for n in missing)}")
    return template


class CoTRMConfig(Section):
    """Chain-of-Thought reward model (k1.5 sec. 2.3.5): a causal LM that reasons, then writes a JSON verdict.

    Decoding is greedy, so a verdict is a function of its inputs and is cached.
    """

    path: str | None = Field(None, description="HF causal LM directory (or hub name) of the judge; required to score.")
    device: str = Field("auto", description="'auto' (CUDA if available, else CPU), 'cpu', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Judge weights dtype.")
    template: str = Field(COT_TEMPLATE, description="Judge prompt with {question}, {reference}, {response}.")
    use_chat_template: bool = Field(True, description="Wrap the prompt in the tokenizer's chat template if it has one.")
    verdict_key: str = Field("correct", min_length=1, description="Key of the boolean verdict in the JSON object.")
    max_new_tokens: int = Field(512, ge=1, description="Longest judgement (reasoning + verdict), in tokens.")
    batch_size: int = Field(32, ge=1, description="Judgements decoded together (engine slots).")
    max_response_chars: int = Field(
        8000, ge=1, description="Only the last this-many characters of a response are shown (its answer is at the end)."
    )
    accept_unfinished: bool = Field(
        False, description="Accept a verdict from a judgement cut off by max_new_tokens or repeat detection; "
        "by default such a judgement is an error (the judge may not have reached its final verdict).",
    )
    cache_size: int = Field(100_000, ge=0, description="Verdicts remembered (least recently used dropped); 0: none.")

    @field_validator("template")
    @classmethod
    def _has_parts(cls, template: str) -> str:
        return _require_placeholders(template, ("question", "reference", "response"))


class ValueHeadRMConfig(Section):
    """Classic value-head reward model (k1.5 sec. 2.3.5): a scalar score from a sequence-classification head."""

    path: str | None = Field(None, description="Directory written by `mirrorl train-rm`; required to score.")
    device: str = Field("auto", description="'auto' (CUDA if available, else CPU), 'cpu', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype.")
    batch_size: int = Field(16, ge=1, description="Sequences scored per forward pass.")
    max_length: int = Field(1024, ge=8, description="Longest input in tokens; the response keeps its tail.")
    mapping: Literal["raw", "sigmoid", "threshold"] = Field(
        "threshold", description="Reward from score s: 'raw' s; 'sigmoid' sigmoid(s - offset); 'threshold' 1.0 "
        "if s >= offset else 0.0 (a 0/1 reward like the verifiers', so the loop's accuracy stays meaningful).",
    )
    offset: float = Field(0.0, description="Centre of the sigmoid / the threshold, in score units.")


class RMTrainConfig(Section):
    """Training a value-head reward model (`mirrorl train-rm`); defaults are tuned on the tiny CPU model."""

    train_path: str | None = Field(None, description="JSONL of {prompt, chosen, rejected} (pairwise) or "
                                   "{prompt, response, label} (pointwise); optional 'answer' (the reference).")
    eval_path: str | None = Field(None, description="Held-out rows; None holds out eval_fraction of train_path.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of train rows held out when eval_path is None.")
    objective: Literal["pairwise", "pointwise"] = Field(
        "pairwise", description="Bradley-Terry loss on chosen/rejected pairs, or BCE on labelled responses.")
    base: str | None = Field(None, description="HF model to start from (a causal LM gets a new score head); "
                             "None builds the tiny model with the model.* shape.")
    template: str = Field(VALUE_HEAD_TEMPLATE, description="Input before the response, with {question} and "
                          "{reference}; saved in the model's config so scoring uses the same.")
    steps: int = Field(100, ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Rows per step (a pair counts once).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (one-cycle); about 1e-5 for a pretrained model.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clip.")
    max_length: int = Field(512, ge=8, description="Longest input in tokens; the response keeps its tail.")

    @field_validator("template")
    @classmethod
    def _has_parts(cls, template: str) -> str:
        return _require_placeholders(template, ("question", "reference"))


class Limits(BaseModel):
    """Resource limits of one sandboxed run. Per test unless said otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_seconds: int = Field(
        2, ge=1, le=600, description="RLIMIT_CPU soft limit (SIGXCPU); the hard limit, one second more, is SIGKILL."
    )
    wall_seconds: float = Field(4.0, gt=0, le=600, description="Wall-clock deadline of one test, from start to exit.")
    memory_bytes: int = Field(512 << 20, ge=32 << 20, description="RLIMIT_AS and RLIMIT_DATA of each program process.")
    output_bytes: int = Field(
        1 << 20, ge=1024, description="Cap on the stdout (and on the stderr) of one test; past it the test is killed."
    )
    num_processes: int = Field(
        32, ge=1, le=4096, description="Processes and threads of the program: RLIMIT_NPROC, and cgroup pids.max."
    )
    num_open_files: int = Field(64, ge=16, le=65536, description="RLIMIT_NOFILE of each process.")
    file_bytes: int = Field(16 << 20, ge=0, description="RLIMIT_FSIZE: the largest file a process may write.")
    work_dir_bytes: int = Field(64 << 20, ge=1 << 20, description="Size of the private tmpfs work dir (bubblewrap).")
    compile_seconds: float = Field(30.0, gt=0, le=600, description="CPU and wall limit of the C++ compilation.")
    stop_on_failure: bool = Field(
        True, description="Skip the remaining tests after a crash, timeout or output overflow."
    )


class GenTestsConfig(BaseModel):
    """Test-case generation; the thresholds are counts of the chosen solutions and of inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_inputs: int = Field(50, ge=1, le=10_000, description="Generator runs (seeds) per problem; the report: 50.")
    num_solutions: int = Field(10, ge=1, le=1000, description="Solutions chosen at random to run; the report: 10.")
    min_agree: int = Field(
        7, ge=1, description="A test is kept when this many solutions print its output; the report: 7."
    )
    min_passing: int = Field(
        9, ge=1, description="A problem is kept when this many solutions pass every kept test; the report: 9."
    )
    min_tests: int = Field(40, ge=1, description="A problem needs this many kept tests; the report's funnel: 40.")
    seed: int = Field(0, ge=0, description="Seeds each problem's choice of solutions and its generator seeds.")
    num_workers: int = Field(0, ge=0, le=256, description="Sandboxes run at once; 0 means one per CPU core.")
    limits: Limits = Field(default_factory=Limits, description="Limits of every generator and solution run.")
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0, max_new_tokens=1024, batch_size=16),
        description="How a model writes generators (not given by the report; greedy here).",
    )

    @model_validator(mode="after")
    def _fits(self) -> GenTestsConfig:
        for name, bound, of in (("min_agree", self.num_solutions, "num_solutions"),
                                ("min_passing", self.num_solutions, "num_solutions"),
                                ("min_tests", self.num_inputs, "num_inputs")):  # fmt: skip
            if getattr(self, name) > bound:
                raise ValueError(f"{name}={getattr(self, name)} exceeds {of}={bound}")
        return self


