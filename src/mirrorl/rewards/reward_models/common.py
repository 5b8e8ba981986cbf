"""What the two reward models share: their config sections and the prompt template.

The config classes live here, apart from the models, so that `mirrorl.config` can import them
without importing the engine (which imports `mirrorl.config`). Both models take (question,
reference answer, response), as in k1.5 sec. 2.3.5; a template names those three parts with
`{question}`, `{reference}` and `{response}`, filled in one pass (so a response that contains the
text "{reference}" stays as written) and leaving every other brace alone (the CoT template shows
the JSON verdict it wants).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_PLACEHOLDER = re.compile(r"\{(question|reference|response)\}")

COT_TEMPLATE = (
    "You are checking a response to a question against the reference answer.\n\n"
    "Question:\n{question}\n\nReference answer:\n{reference}\n\nResponse:\n{response}\n\n"
    "Is the final answer of the response equivalent to the reference answer (the same value, in any "
    "form)? Think step by step, then end with one line of JSON: {\"correct\": true} or {\"correct\": false}."
)
VALUE_HEAD_TEMPLATE = "Question: {question}\nReference answer: {reference}\nResponse: "


def fill_template(template: str, question: str, reference: str, response: str = "") -> str:
    """Replace the three placeholders in one pass; other braces are kept.

    >>> fill_template('Q={question} R={reference} A={response} {"correct": true}', "1+1?", "2", "{reference}")
    'Q=1+1? R=2 A={reference} {"correct": true}'
    """
    parts = {"question": question, "reference": reference, "response": response}
    return _PLACEHOLDER.sub(lambda match: parts[match.group(1)], template)


def _require_placeholders(template: str, names: tuple[str, ...]) -> str:
    missing = [name for name in names if "{" + name + "}" not in template]
    if missing:
        raise ValueError(f"template lacks {', '.join('{' + n + '}' for n in missing)}")
    return template


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CoTRMConfig(_Section):
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


class ValueHeadRMConfig(_Section):
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


class RMTrainConfig(_Section):
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

