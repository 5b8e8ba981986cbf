"""Whether a program's stdout matches the expected output.

Whitespace-tolerant: both texts are split into whitespace-separated tokens, so spaces, tabs,
line breaks and trailing blanks do not matter (stricter than some judges about nothing, laxer
about line layout: "1 2" matches "1\\n2"). With a float tolerance, two tokens that both parse as
finite floats match when they differ by at most the tolerance, absolutely or relatively (the
usual "1e-6 absolute or relative error" rule). Does not: special judges, several valid answers.
"""

from __future__ import annotations

import math


def tokens_match(actual: str, expected: str, float_tolerance: float | None) -> bool:
    """One token against one.

    >>> tokens_match("0.3333333", "0.333333333", 1e-6), tokens_match("0.33", "0.333", 1e-6)
    (True, False)
    """
    if actual == expected:
        return True
    if float_tolerance is None:
        return False
    try:
        a, b = float(actual), float(expected)
    except ValueError:
        return False
    return (math.isfinite(a) and math.isfinite(b)
            and math.isclose(a, b, rel_tol=float_tolerance, abs_tol=float_tolerance))


def outputs_match(actual: str, expected: str, float_tolerance: float | None = None) -> bool:
    """Token-wise comparison of two outputs.

    >>> outputs_match("1  2\\n3 \\n\\n", "1 2\\n3")
    True
    >>> outputs_match("1 2", "1 2 3"), outputs_match("2.0000001", "2", 1e-6), outputs_match("2.0000001", "2")
    (False, True, False)
    """
    actual_tokens, expected_tokens = actual.split(), expected.split()
    if len(actual_tokens) != len(expected_tokens):
        return False
    return all(tokens_match(a, e, float_tolerance) for a, e in zip(actual_tokens, expected_tokens))
