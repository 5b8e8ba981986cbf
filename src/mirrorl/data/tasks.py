"""Built-in, procedurally generated reasoning task: the embedded data of the demo.

`chain_sum`: a prompt lists labelled digits and asks for their sum, e.g.

    prompt:   a=3 b=5 c=9 d=2. sum a-d?
    response: a=3 b=5:3+5=8 c=9:8+9=17 d=2:17+2=19 check:19-2=17 ok. answer:19

The response is a long chain of thought in miniature (k1.5 sec. 2.2): it adds one term per step,
first restating the term exactly as the prompt wrote it ("c=9", so a tiny model can copy it by
matching the label, an induction-head lookup), sometimes makes a slip and corrects itself
("c=9:8+9=16 wait 8+9=17"), and
sometimes verifies its last step before answering. Checks and corrections make responses of
different lengths for the same problem, which is what the length penalty (sec. 2.3.3) acts on.

The short-CoT style (`TraceStyle(terse=True)`, `data.trace_style=short`) writes only the running
sums, "3+5=8 8+9=17 17+2=19 answer:19": no restated terms, slips or checks. It is the short-CoT
model that long2short merges with (k1.5 sec. 2.4). Both styles draw the same random numbers, so a
seed gives the same problems in either style and only the responses differ.

Difficulty is the level (1-5), i.e. the number of terms minus two, and drives the curriculum
(sec. 2.3.4). Everything is deterministic from a seed; the evaluation split uses a disjoint seed
stream and excludes problems whose prompt occurs in the training split.

Not covered: natural-language word problems; other task families plug in through data files.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

from mirrorl.types import Problem

NUM_LEVELS = 5
_LABELS = string.ascii_lowercase
_ANSWER_RE = re.compile(r"answer:\s*(-?\d+)")


@dataclass(frozen=True)
class TraceStyle:
    """How often the generated warm-up traces correct a slip or check their last step; `terse`
    writes the short-CoT trace instead (only the sums; the probabilities still draw, unused)."""

    slip_prob: float = 0.08  # per step: write a wrong sum, then "wait" and the right one
    check_prob: float = 0.5  # per trace: verify the last step by subtraction before answering
    terse: bool = False


def num_terms(level: int) -> int:
    """Number of digits to add at a difficulty level (level 1 -> 3 terms ... level 5 -> 7)."""
    if not 1 <= level <= NUM_LEVELS:
        raise ValueError(f"chain_sum level must be in 1..{NUM_LEVELS}, got {level}")
    return level + 2


def make_problem(rng: random.Random, level: int, style: TraceStyle = TraceStyle()) -> Problem:
    """Draw one problem of the given level together with a long-CoT solution trace."""
    digits = [rng.randint(1, 9) for _ in range(num_terms(level))]
    labels = _LABELS[: len(digits)]
    prompt = " ".join(f"{lab}={d}" for lab, d in zip(labels, digits)) + f". sum a-{labels[-1]}?"
    return Problem(
        id=f"chain_sum/{level}/" + "".join(map(str, digits)),
        prompt=prompt,
        answer=str(sum(digits)),
        difficulty=float(level),
        solution=_trace(labels, digits, rng, style),
        task="chain_sum",
        meta={"level": level},
    )


def _trace(labels: str, digits: list[int], rng: random.Random, style: TraceStyle) -> str:
    total = digits[0]
    steps = [] if style.terse else [f"{labels[0]}={total}"]
    for lab, d in zip(labels[1:], digits[1:]):
        new = total + d
        slip = rng.random() < style.slip_prob
        wrong = new + rng.choice([-2, -1, 1, 2]) if slip else None
        if style.terse:
            steps.append(f"{total}+{d}={new}")
        elif slip:
            steps.append(f"{lab}={d}:{total}+{d}={wrong} wait {total}+{d}={new}")
        else:
            steps.append(f"{lab}={d}:{total}+{d}={new}")
        total = new
    if rng.random() < style.check_prob and not style.terse:
        steps.append(f"check:{total}-{digits[-1]}={total - digits[-1]} ok.")
    steps.append(f"answer:{total}")
    return " ".join(steps)


def make_split(
    num_problems: int,
    seed: int,
    levels: tuple[int, ...] = tuple(range(1, NUM_LEVELS + 1)),
    exclude_prompts: frozenset[str] = frozenset(),
    style: TraceStyle = TraceStyle(),
) -> list[Problem]:
    """`num_problems` distinct problems spread evenly over `levels`, reproducible from `seed`.

    A level whose problems run out (level 1 has only 9**3 = 729) leaves the rotation; a
    ValueError says so when all levels together cannot supply `num_problems`.
    """
    rng = random.Random(seed)
    problems: list[Problem] = []
    seen = set(exclude_prompts)
    rotation = list(levels)
    while len(problems) < num_problems:
        if not rotation:
            raise ValueError(f"cannot draw {num_problems} distinct chain_sum problems at levels {levels}")
        level = rotation[len(problems) % len(rotation)]
        for _ in range(200):
            problem = make_problem(rng, level, style)
            if problem.prompt not in seen:
                seen.add(problem.prompt)
                problems.append(problem)
                break
        else:
            rotation.remove(level)
    return problems


def extract_answer(response: str) -> str | None:
    """The integer after the last "answer:" in a response, or None when there is none.

    >>> extract_answer("a:3 b:3+5=8 answer:8")
    '8'
    >>> extract_answer("a:3 b:3+5=8") is None
    True
    """
    found = _ANSWER_RE.findall(response)
    return found[-1] if found else None


def verify(response: str, answer: str) -> bool:
    """Rule-based verifier: the extracted final answer equals the reference exactly.

    >>> verify("c:8+9=17 answer:17", "17"), verify("answer:16", "17"), verify("17", "17")
    (True, False, False)
    """
    return extract_answer(response) == answer.strip()
