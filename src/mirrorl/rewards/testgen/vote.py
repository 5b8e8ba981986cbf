"""Which generated inputs become tests, and which solutions pass them (k1.5 sec. 2.3.5).

A test is kept when at least `min_agree` of the chosen ground-truth solutions print the same
output on its input; that output becomes the expected output. A solution passes when it matches
the expected output on every kept test. "Same" is the code reward's comparison (whitespace-
tolerant, optionally float-tolerant: sandbox/compare.py), so a kept test never fails a response
that the reward would accept. A solution that crashed or timed out on an input has no output
there: it agrees with nobody, and fails that test if the test is kept.

Pure functions over outputs: nothing here runs code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mirrorl.rewards.sandbox.compare import outputs_match
from mirrorl.types import TestCase


def majority_output(outputs: Sequence[str | None], float_tolerance: float | None = None) -> tuple[str | None, int]:
    """The output that the most solutions match, and how many match it; ties go to the earlier one.

    >>> majority_output(["3\\n", "4", None, "3", " 3 "])
    ('3\\n', 3)
    >>> majority_output([None, None])
    (None, 0)
    """
    best, best_count = None, 0
    for candidate in outputs:
        if candidate is None:
            continue
        count = sum(output is not None and outputs_match(output, candidate, float_tolerance) for output in outputs)
        if count > best_count:
            best, best_count = candidate, count
    return best, best_count


@dataclass(frozen=True)
class Selection:
    """The vote over one problem's inputs. Legend: I inputs, S solutions."""

    tests: list[TestCase]  # the kept inputs with their expected outputs, in input order
    num_agreeing: list[int]  # [I] solutions matching each input's majority output
    passed: list[bool]  # [S] whether each solution matches the expected output of every kept test

    @property
    def num_passing(self) -> int:
        return sum(self.passed)


def select_tests(
    inputs: Sequence[str], outputs: Sequence[Sequence[str | None]], min_agree: int, float_tolerance: float | None = None
) -> Selection:
    """Vote on every input. `outputs[s][i]` is solution s's stdout on `inputs[i]`, None if it failed there.

    >>> selection = select_tests(["a", "b"], [["1", "5"], ["1", "6"], ["1 ", None]], min_agree=2)
    >>> [(t.input, t.output) for t in selection.tests], selection.num_agreeing, selection.passed
    ([('a', '1')], [3, 1], [True, True, True])
    """
    assert all(len(row) == len(inputs) for row in outputs), "one output (or None) per solution and input"
    tests, num_agreeing, kept = [], [], []
    for index, text in enumerate(inputs):
        expected, count = majority_output([row[index] for row in outputs], float_tolerance)
        num_agreeing.append(count)
        if expected is not None and count >= min_agree:
            tests.append(TestCase(text, expected))
            kept.append(index)
    passed = [
        all(row[i] is not None and outputs_match(row[i], test.output, float_tolerance) for i, test in zip(kept, tests))
        for row in outputs
    ]
    return Selection(tests, num_agreeing, passed)
