"""Built-in chain_sum task: determinism, correctness of traces, held-out split, verifier."""

import random
import re

import pytest

from mirrorl.config import DataConfig
from mirrorl.data import tasks
from mirrorl.data.io import builtin_splits


def test_trace_is_correct_and_verifies():
    for level in range(1, tasks.NUM_LEVELS + 1):
        problem = tasks.make_problem(random.Random(level), level)
        digits = [int(d) for d in re.findall(r"=(\d)", problem.prompt)]
        assert len(digits) == level + 2
        assert problem.answer == str(sum(digits))
        assert tasks.verify(problem.solution, problem.answer)
        assert problem.difficulty == level


def test_slips_are_corrected_and_checks_are_right():
    style = tasks.TraceStyle(slip_prob=1.0, check_prob=1.0)
    problem = tasks.make_problem(random.Random(0), 3, style)
    # every step after the first writes a wrong sum, then "wait" and the right one
    assert problem.solution.count(" wait ") == 4
    total, last = int(problem.answer), int(problem.prompt.split(".")[0].split("=")[-1])
    assert f"check:{total}-{last}={total - last} ok." in problem.solution


def test_make_split_is_deterministic_and_distinct():
    a, b = tasks.make_split(300, seed=7), tasks.make_split(300, seed=7)
    assert [p.prompt for p in a] == [p.prompt for p in b]
    assert len({p.prompt for p in a}) == 300


def test_exhausted_level_leaves_rotation_and_impossible_request_fails():
    # level 1 has 9**3 = 729 distinct problems; level 2 carries on once level 1 is spent
    assert len(tasks.make_split(600, seed=1, levels=(1,))) == 600
    mixed = tasks.make_split(1600, seed=1, levels=(1, 2))
    assert sum(p.difficulty == 1 for p in mixed) <= 729 and len(mixed) == 1600
    with pytest.raises(ValueError, match="cannot draw 730 distinct"):
        tasks.make_split(730, seed=1, levels=(1,))


def test_eval_split_is_held_out():
    splits = builtin_splits(DataConfig(num_sft=2000, num_rl=500, num_eval=200), seed=0)
    train = {p.prompt for p in splits["sft"] + splits["rl"]}
    assert len(splits["eval"]) == 200 and not train & {p.prompt for p in splits["eval"]}


def test_verifier():
    assert tasks.extract_answer("answer:3 wait answer:12") == "12"
    assert tasks.verify("a:1 answer: 12", "12")
    assert not tasks.verify("a:1 answer:121", "12")
    assert not tasks.verify("12", "12")


def test_short_traces_share_the_problems_and_write_only_the_sums():
    long = tasks.make_split(200, seed=5, style=tasks.TraceStyle(slip_prob=0.5, check_prob=0.5))
    short = tasks.make_split(200, seed=5, style=tasks.TraceStyle(slip_prob=0.5, check_prob=0.5, terse=True))
    assert [p.prompt for p in short] == [p.prompt for p in long]  # the same random stream
    for problem in short:
        assert tasks.verify(problem.solution, problem.answer)
        assert not re.search(r"[a-z]=|wait|check", problem.solution.removesuffix(f"answer:{problem.answer}"))
    # a=3 b=5 c=9 d=2 -> only the running sums
    problem = tasks.make_problem(random.Random(0), 2, tasks.TraceStyle(terse=True))
    digits = [int(d) for d in re.findall(r"=(\d)", problem.prompt)]
    sums = [sum(digits[: i + 1]) for i in range(len(digits))]
    expected = " ".join(f"{sums[i - 1]}+{digits[i]}={sums[i]}" for i in range(1, len(digits)))
    assert problem.solution == f"{expected} answer:{sums[-1]}"
    assert sum(len(p.solution) for p in short) < 0.6 * sum(len(p.solution) for p in long)
