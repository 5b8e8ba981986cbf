"""Math answer reward (k1.5 sec. 2.3.5): answer extraction, guards, equivalence, the worker pool."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from pydantic import ValidationError

from mirrorl.config import MatchSettings, MathRewardConfig
from mirrorl.rewards.answer_extraction import (
    as_latex_source,
    find_answer_phrase,
    find_boxed,
    find_final_answer,
    find_last_number,
    guard_reason,
)
from mirrorl.rewards.math_reward import reward_from_verdicts
from mirrorl.rewards.math_workers import MathVerdict, MathVerifier, guard_limits, judge

LIMITS = guard_limits(MathRewardConfig())


# --- extraction -------------------------------------------------------------------------------


def test_boxed_nested_braces_and_last_wins():
    text = r"first \boxed{3}. Then $\boxed{\frac{1}{\sqrt{2}}}$ is the answer."
    found = find_boxed(text)
    assert found.text == r"\frac{1}{\sqrt{2}}"
    assert found.math_mode
    assert find_boxed(r"\fbox{x^{2^{n}}}").text == "x^{2^{n}}"


def test_boxed_listed_together_are_joined_but_separate_sentences_are_not():
    assert find_boxed(r"roots: \boxed{1}, \boxed{-2}").text == "1, -2"
    assert find_boxed(r"\boxed{(3,3)} \text{ and } \boxed{(1,1)}").text == "(3,3), (1,1)"
    assert find_boxed(r"maybe \boxed{4}. Checking again, the answer is \boxed{5}").text == "5"


def test_boxed_unterminated_or_missing_is_none():
    assert find_boxed("no box here") is None
    assert find_boxed(r"\boxed{\frac{1}{2}") is None  # truncated response


def test_answer_phrases():
    assert find_answer_phrase("Thus the answer is 42. Good.").text == "42"
    assert find_answer_phrase("Answer: $x^2+1$ and more").text == "$x^2+1$"
    phrase = find_answer_phrase(r"The final answer is \boxed{7}.")
    assert (phrase.text, phrase.math_mode) == ("7", True)
    assert find_answer_phrase("I do not know") is None


def test_final_answer_is_the_later_of_boxed_and_phrase():
    assert find_final_answer(r"so \boxed{255}. Final Answer: The final answer is $10,455$.").text == "$10,455$"
    assert find_final_answer(r"The answer is 3? No: \boxed{4}").text == "4"
    assert find_final_answer("nothing announced") is None


def test_last_number_fallback():
    assert find_last_number("3 apples and 1,250.5 pears").text == "1250.5"
    assert find_last_number("it is 4 4/9").text == "4 4/9"
    assert find_last_number("no digits") is None


def test_latex_source_wraps_bare_math_and_reads_mixed_numbers():
    assert as_latex_source(r"\frac{1}{2}", math_mode=False) == r"$\frac{1}{2}$"
    assert as_latex_source("4 4/9", math_mode=False) == "$40/9$"  # 4 * 9 + 4 = 40
    assert as_latex_source("11 7/6", math_mode=False) == "$11 7/6$"  # 7/6 > 1: not a mixed number
    assert as_latex_source("$x$ is 3", math_mode=False) == "$x$ is 3"  # delimited: left to math-verify


# --- guards -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason_start"),
    [
        (r"2^{2^{2^{2^{100}}}}", "power tower: exponents nested 4 deep"),
        (r"9^{9^{9}}", "power tower: '9^{9^{9'"),  # 9^9 = 387420489 > 10^6
        ("1" + "0" * 999_999, "answer of 1000000 characters"),
        ("7" * 600, "integer of 600 digits"),
        ("{" * 12 + "1" + "}" * 12, "brackets nested 12 deep"),
    ],
)
def test_guards_name_pathological_answers(answer, reason_start):
    start = time.perf_counter()
    assert guard_reason(answer, LIMITS).startswith(reason_start)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("answer", [r"\frac{\sqrt{\sqrt{11}+\sqrt{194}}}{2\sqrt{33}+15}", r"e^{x^{2}}", r"3^{3^{3}}"])
def test_guards_let_ordinary_answers_through(answer):
    assert guard_reason(answer, LIMITS) is None  # 3^{3^3}: largest exponent 27


# --- equivalence, in this process --------------------------------------------------------------


def _judge(response: str, reference: str, **settings) -> MathVerdict:
    return judge(response, reference, MatchSettings(**settings), LIMITS, 1)


@pytest.mark.parametrize(
    ("response", "reference", "status"),
    [
        (r"so \boxed{1/2}", "0.5", "correct"),
        (r"so \boxed{\frac{1}{2}}", "0.5", "correct"),
        (r"The answer is $\dfrac12$.", r"\frac{1}{2}", "correct"),
        (r"\boxed{0.33}", r"\frac{1}{3}", "incorrect"),  # 0.33 != 0.333333 at 6 decimals
        (r"\boxed{[0, 1)}", "[0,1)", "correct"),
        (r"\boxed{(0, 1)}", "[0,1)", "incorrect"),
        (r"\boxed{\{2, 1\}}", r"\{1,2\}", "correct"),
        (r"\boxed{4\frac{4}{9}}", "40/9", "correct"),
        ("The answer is 4 4/9.", "40/9", "correct"),
        (r"\boxed{x^2 + 2x + 1}", "(x+1)^2", "correct"),
    ],
)
def test_equivalence_by_hand(response, reference, status):
    assert _judge(response, reference).status == status


def test_no_answer_is_incorrect_but_unusable_reference_is_error():
    missing = _judge("I cannot solve this.", "5", response_strategies=("final_answer",))
    assert (missing.status, missing.extracted) == ("incorrect", None)
    assert _judge(r"\boxed{5}", "   ").status == "error"


def test_refused_answer_is_error_not_incorrect():
    verdict = _judge(r"\boxed{2^{2^{2^{2^{100}}}}}", "7")
    assert verdict.status == "error"
    assert verdict.detail.startswith("refused (final_answer): power tower")


def test_per_call_settings_change_the_comparison():
    assert _judge(r"\boxed{0.33}", r"\frac{1}{3}", float_rounding=2).status == "correct"
    assert _judge("$f(y)$", "$f(x)$", strict=False).status == "correct"
    assert _judge("$f(y)$", "$f(x)$").status == "incorrect"


def test_config_fields_are_bounded():
    with pytest.raises(ValidationError):
        MathRewardConfig(num_workers=-1)
    with pytest.raises(ValidationError, match="library_timeout_seconds=2 must be below"):
        MathRewardConfig(timeout_seconds=2.0, library_timeout_seconds=2)
    with pytest.raises(ValidationError):
        MatchSettings(response_strategies=("boxed", "guess"))


def test_reward_from_verdicts_never_turns_an_error_into_zero():
    verdicts = [MathVerdict("correct", "1"), MathVerdict("incorrect", "2"), MathVerdict("error", None, "timed out")]
    assert reward_from_verdicts(verdicts) == [1.0, 0.0, None]


# --- the worker pool --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(MathRewardConfig(num_workers=2)) as pool:
        yield pool


def test_pool_verifies_and_counts(verifier):
    before = verifier.counters()
    assert verifier.verify(r"hence \boxed{\frac{14}{3}}", r"\frac{14}{3}").status == "correct"
    assert verifier.verify("The answer is 7.", r"\frac{14}{3}").status == "incorrect"
    after = verifier.counters()
    assert after["calls"] - before["calls"] == 2
    assert (after["correct"] - before["correct"], after["incorrect"] - before["incorrect"]) == (1, 1)


def test_pathological_inputs_return_error_quickly(verifier):
    inputs = [
        r"\boxed{2^{2^{2^{2^{100}}}}}",
        r"\boxed{" + "9" * 1_000_000 + "}",  # 10^6 digits: only the last 100k characters are read
        "x" * 300_000 + r" \boxed{" + "+".join(["x"] * 2000) + "}",
        r"\boxed{" + "{" * 40 + "1" + "}" * 40 + "}",
    ]
    for response in inputs:
        start = time.perf_counter()
        verdict = verifier.verify(response, "7")
        assert verdict.status == "error", (response[:40], verdict)
        assert time.perf_counter() - start < 2.0


def test_batch_keeps_order_and_eight_threads_get_right_answers(verifier):
    # k/2 for k = 1..16: the response boxes k/2 (correct) for even k, k/2 + 1 (incorrect) for odd k
    pairs = [(rf"\boxed{{\frac{{{k + 2 * (k % 2)}}}{{2}}}}", str(k / 2)) for k in range(1, 17)]
    expected = ["correct" if k % 2 == 0 else "incorrect" for k in range(1, 17)]
    assert [v.status for v in verifier.verify_batch(pairs)] == expected
    results: dict[int, list[str]] = {}

    def worker(thread: int) -> None:  # every thread checks all 16 pairs, starting at its own offset
        results[thread] = [verifier.verify(*pairs[(i + thread) % 16]).status for i in range(16)]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[t] == expected[t:] + expected[:t] for t in range(8))


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_hanging_check_is_killed_at_the_deadline_and_the_worker_respawns(start_method):
    # math-verify's own timeout off and the tower guard loosened: only the hard deadline stops it
    config = MathRewardConfig(
        num_workers=1, timeout_seconds=1.5, library_timeout_seconds=0, max_exponent=10**15, start_method=start_method
    )
    with MathVerifier(config) as pool:
        start = time.perf_counter()
        verdict = pool.verify(r"\boxed{2^{2^{40}}}", "3")
        elapsed = time.perf_counter() - start
        assert (verdict.status, verdict.detail) == ("error", "timed out after 1.5 s")
        assert 1.5 <= elapsed < 2.5
        assert pool.verify(r"\boxed{3}", "3").status == "correct"  # served by the replacement
        counters = pool.counters()
        assert (counters["timeouts"], counters["respawns"], counters["errors"]) == (1, 1, 1)
    with pytest.raises(RuntimeError, match="closed"):
        pool.verify("1", "1")


def test_worker_killed_mid_call_gives_error_and_is_replaced():
    config = MathRewardConfig(num_workers=1, timeout_seconds=30.0, library_timeout_seconds=0, max_exponent=10**15)
    with MathVerifier(config) as pool:
        (pid,) = pool.worker_pids()
        verdicts: list[MathVerdict] = []
        call = threading.Thread(target=lambda: verdicts.append(pool.verify(r"\boxed{2^{2^{40}}}", "3")))
        call.start()
        time.sleep(0.5)  # the worker is now stuck in sympy
        os.kill(pid, signal.SIGKILL)
        call.join(5.0)
        assert verdicts[0].status == "error"
        assert verdicts[0].detail.startswith("worker died")
        assert pool.verify(r"\boxed{3}", "3").status == "correct"
        assert pool.worker_pids() != [pid]
        assert (pool.counters()["crashes"], pool.counters()["respawns"]) == (1, 1)


def test_pool_verdicts_become_rewards_and_an_error_is_none(verifier):
    pairs = [
        (r"... so $x = \boxed{\dfrac{1}{2}}$.", "0.5"),
        ("The answer is 7.", "8"),
        (r"\boxed{2^{2^{2^{2^{100}}}}}", "8"),  # refused: an error verdict, not a wrong answer
    ]
    assert reward_from_verdicts(verifier.verify_batch(pairs)) == [1.0, 0.0, None]


def test_registry_math_reward_uses_the_runs_settings_and_scores_a_batch_in_order():
    from mirrorl.config import RewardsConfig
    from mirrorl.rewards.registry import get_reward
    from mirrorl.types import Problem

    reward = get_reward("math", RewardsConfig())
    problem = Problem(id="p", prompt="q", answer="1/2")
    assert reward.config == RewardsConfig().math
    other = Problem(id="q", prompt="q", answer="3")
    responses = [r"so \boxed{0.5}", "The answer is 3.", r"\boxed{\frac{2}{4}}", "The answer is 3."]
    assert reward(responses, [problem, problem, problem, other]) == [1.0, 0.0, 1.0, 1.0]
    assert reward([], []) == []
