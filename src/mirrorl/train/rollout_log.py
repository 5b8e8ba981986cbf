"""The samples themselves: what the policy wrote, how it was scored, and how it was trained on.

RL failures often show only in the samples (reward hacking, a format the verifier misreads,
responses that loop or get cut). Every `rl.log_rollouts_every` iterations the loop writes the
iteration's scored samples (at most `rl.log_rollout_groups` groups, the first drawn) to
`rollouts/{iteration}.jsonl`, one JSON object per sample. The first five fields are the ones verl's
rollout viewer reads (`input`, `output`, `gts`, `score`, `step`), so its readers read our files
unchanged; the rest are ours:

    problem, group        the problem's index in the training set, the draw it belongs to (k samples)
    correct, reward       the verifier's verdict and correctness reward
    repeat_penalty        minus rollout.repeat.penalty for a response stopped for looping, else 0
    length_reward         k1.5's length reward (sec. 2.3.3), weighted as in training
    advantage             score minus its group's mean score: the baseline of k1.5's loss (sec. 2.3.2)
    tokens, finish_reason response tokens; stop | length | budget | repeat
    versions              [policy version, tokens] runs: the policies that wrote its segments
    off_policy_weight     the truncated importance weight of a partial rollout's older segments, or null
    logprobs, token_texts each response token's log-prob under the policy that sampled it, and its text
                          (only with rl.log_logprobs)

`score` = reward + repeat_penalty + length_reward, the reward the loss trained on. A file is
written whole (temporary file, then rename); a resumed run writes the iterations after its
checkpoint again, as an uninterrupted run would have.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from mirrorl.types import Problem, Sample

ROLLOUTS_DIR = "rollouts"  # in a run directory


def version_runs(versions: Sequence[int]) -> list[list[int]]:
    """Per-token policy versions as [version, tokens] runs.

    >>> version_runs([3, 3, 4, 4, 4])
    [[3, 2], [4, 3]]
    """
    return [[version, len(list(run))] for version, run in groupby(versions)]


def group_advantages(scores: Sequence[float], group_ids: Sequence[int]) -> list[float]:
    """Each score minus the mean score of its group.

    >>> group_advantages([1.0, 0.0, 0.5, 0.5], [7, 7, 9, 9])
    [0.5, -0.5, 0.0, 0.0]
    """
    totals: dict[int, list[float]] = {}
    for score, group in zip(scores, group_ids, strict=True):
        totals.setdefault(group, []).append(score)
    return [score - sum(totals[group]) / len(totals[group]) for score, group in zip(scores, group_ids)]


def rollout_records(samples: Sequence[Sample], problems: Sequence[Problem], tokenizer: PreTrainedTokenizerBase,
                    iteration: int, repeat_penalty: float, off_policy_weights: Mapping[int, float],
                    max_groups: int, with_logprobs: bool) -> list[dict[str, Any]]:
    """The records of an iteration's scored `samples` (in order; `off_policy_weights` by sample index),
    keeping the first `max_groups` groups; advantages are over the whole group as trained."""
    scores = [sample.reward + sample.length_reward for sample in samples]
    advantages = group_advantages(scores, [sample.group_id for sample in samples])
    kept = list(dict.fromkeys(sample.group_id for sample in samples))[:max_groups]
    records = []
    for index, sample in enumerate(samples):
        if sample.group_id not in kept:
            continue
        penalty = -repeat_penalty if sample.finish_reason == "repeat" else 0.0
        record = {
            "input": tokenizer.decode(sample.prompt_ids, skip_special_tokens=True),
            "output": sample.text,
            "gts": problems[sample.problem_index].answer,
            "score": scores[index],
            "step": iteration,
            "problem": sample.problem_index,
            "group": sample.group_id,
            "correct": sample.correct,
            "reward": sample.reward - penalty,
            "repeat_penalty": penalty,
            "length_reward": sample.length_reward,
            "advantage": advantages[index],
            "tokens": len(sample.response_ids),
            "finish_reason": sample.finish_reason,
            "versions": version_runs(sample.versions),
            "off_policy_weight": off_policy_weights.get(index),
        }
        if with_logprobs:
            record["logprobs"] = list(sample.logprobs)
            record["token_texts"] = [tokenizer.decode([token]) for token in sample.response_ids]
        records.append(record)
    return records


def write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """`records` as JSON lines at `path`, replacing it whole (written to a temporary file first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    with partial.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, path)


class RolloutLog:
    """`rollouts/{iteration}.jsonl` of a run directory, every `every` iterations (0: never)."""

    def __init__(self, run_dir: Path, first: int, every: int) -> None:
        """Start at iteration `first`: files of iterations from `first` on (all, for a new run) are
        removed, as the metrics after a resumed checkpoint are."""
        self.directory, self.every = run_dir / ROLLOUTS_DIR, every
        if self.directory.is_dir():
            for old in self.directory.glob("*.jsonl"):
                if old.stem.isdigit() and int(old.stem) >= first:
                    old.unlink()

    def due(self, iteration: int) -> bool:
        return self.every > 0 and iteration % self.every == 0

    def write(self, iteration: int, records: Sequence[Mapping[str, Any]]) -> None:
        write_jsonl(self.directory / f"{iteration}.jsonl", records)
