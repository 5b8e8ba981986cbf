"""How responses are drawn: the `rollout` section, also used by evaluation, the judge and test generation.

Runtime code never sees these sections: `SamplingConfig.params()` turns one into the frozen
`mirrorl.types.SamplingParams` of plain numbers that generators take.
"""

from __future__ import annotations

from pydantic import Field

from mirrorl.config.base import Section
from mirrorl.types import RepeatRule, SamplingParams


class RepeatConfig(Section):
    """Repeat detection (k1.5 sec. 2.6.2): a response whose tail loops ends with finish reason 'repeat'."""

    enabled: bool = Field(True, description="Stop looping responses early.")
    max_period: int = Field(64, ge=1, description="Longest repeating unit looked for, in tokens.")
    min_repeats: int = Field(4, ge=2, description="Copies of the unit needed to fire.")
    min_span: int = Field(48, ge=2, description="Tokens the repeated tail must cover to fire.")
    penalty: float = Field(0.0, ge=0, description="Subtracted from the reward of a response stopped for repeating.")


class SamplingConfig(Section):
    """How responses are drawn from the policy."""

    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Top-k filter; 0 disables it.")
    max_new_tokens: int = Field(160, ge=1, description="Maximum response length in tokens.")
    batch_size: int = Field(128, ge=1, description="Sequences decoded together (engine slots).")
    stop_token_ids: list[int] = Field(default_factory=list, description="Token ids that end a response besides EOS.")
    repeat: RepeatConfig = Field(default_factory=RepeatConfig, description="Early stop of looping output.")

    def params(self, **changes: float) -> SamplingParams:
        """The runtime parameters, with `changes` (e.g. temperature=0) applied."""
        rule = self.repeat
        repeat = RepeatRule(rule.max_period, rule.min_repeats, rule.min_span) if rule.enabled else None
        fields = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                  "max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size}
        return SamplingParams(**{**fields, **changes}, stop_token_ids=tuple(self.stop_token_ids), repeat=repeat)
