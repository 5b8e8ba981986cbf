"""Reward functions for the resume and bad-input tests, imported by name ('toy_rewards:varied').

An untrained tiny model writes random characters, so the built-in task's reward is always 0; these
depend on the response text only, which keeps runs deterministic while success rates vary.
"""

NOT_CALLABLE = 3


def varied(response: str, problem) -> float:
    """1.0 for a third of the responses by their character sum; raises on a seventh of them (counted, dropped)."""
    total = sum(map(ord, response))
    if total % 7 == 0:
        raise ValueError("cannot score this response")
    return float(total % 3 == 0)


def always_raises(response: str, problem) -> float:
    raise ZeroDivisionError("division by zero in the scorer")
