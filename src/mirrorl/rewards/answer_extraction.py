"""Find the final answer in a math response, parse it with math-verify, refuse pathological ones.

Implements the answer-finding half of the rule-based math reward of k1.5 (sec. 2.3.5): the report
checks a response's final answer against the reference but does not say how the answer is found.
These strategies are tried in a configurable order, the first that yields a parseable answer wins:

  boxed          content of the last \\boxed{...} / \\fbox{...}, nested braces matched; boxed answers
                 listed together ("\\boxed{1}, \\boxed{2}", "\\boxed{a} and \\boxed{b}") are joined.
  answer_phrase  what follows the last "final answer is", "answer is", "answer:" up to the end of
                 that sentence, or the math environment that starts there.
  final_answer   whichever of those two comes later in the text (a boxed intermediate result
                 followed by "The final answer is X" gives X).
  last_number    the last number of the text (integer, decimal, a/b, or a mixed number "4 4/9").
  whole          the whole text is the answer (already-extracted answers, most references).
  math_verify    math-verify's own extractor over the whole text (LaTeX environments, anchored
                 phrases, then the last number or expression).

A bare answer (or any boxed one) is LaTeX and is wrapped in $...$ for math-verify; text with its
own $...$ or prose is searched by math-verify. `guard_reason` names the first pathological feature
of an answer (too long, a huge integer, brackets nested too deep, an integer power tower) so it is
refused (an error verdict) before sympy sees it; math-verify is imported lazily, in the workers.

Does not: compare answers (math_workers.py does, with math-verify's `verify`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------------------------------------
# boxed

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")
# Text allowed between boxed answers that form one listed answer: separators, spacing commands,
# math delimiters, and a short \text{...} ("\boxed{(3,3)} \text{ for part (a) and } \boxed{(1,1)}").
_LIST_GAP_MAX_CHARS = 70
_LIST_SEPARATOR_RE = re.compile(r"(?:^|[^a-z])(?:and|or)(?:[^a-z]|$)|[,;]", re.IGNORECASE)
_SENTENCE_BREAK_RE = re.compile(r"\.\s|\n\s*\n|[?!]")


def _matching_brace(text: str, open_pos: int) -> int | None:
    """Index of the `}` closing the `{` at open_pos (escaped \\{ \\} are skipped), or None."""
    depth = 0
    i = open_pos
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every terminated \\boxed{...} or \\boxed x, left to right."""
    spans = []
    position = 0
    while (match := _BOXED_RE.search(text, position)) is not None:
        after = match.end()
        if after < len(text) and text[after] == "{":
            close = _matching_brace(text, after)
            if close is None:  # unterminated (a truncated response): not an answer
                break
            spans.append((match.start(), close + 1, text[after + 1 : close].strip()))
            position = close + 1
        else:  # "\boxed 5": one token
            token = re.match(r"[^\s$]+", text[after:])
            if token is not None and match.group(0).endswith(tuple(" \t")):
                spans.append((match.start(), after + token.end(), token.group(0)))
            position = after + 1
    return spans


def _is_list_gap(gap: str) -> bool:
    """True when the text between two boxed answers only separates items of one answer."""
    gap = gap.strip()
    if len(gap) < 10 and not _SENTENCE_BREAK_RE.search(gap):
        return True
    return (
        len(gap) < _LIST_GAP_MAX_CHARS
        and _LIST_SEPARATOR_RE.search(gap) is not None
        and _SENTENCE_BREAK_RE.search(gap) is None
    )


@dataclass(frozen=True)
class FoundAnswer:
    """An answer found in a text: what it says, where it starts, whether it is in math mode
    (a boxed answer is LaTeX even when bare; an answer phrase may be prose)."""

    text: str
    start: int
    math_mode: bool


def find_boxed(text: str) -> FoundAnswer | None:
    """The last boxed answer, joined with the boxed answers listed right before it.

    >>> find_boxed(r"so $x=\\boxed{\\frac{1}{2}}$. Wait, recheck: \\boxed{\\sqrt{\\frac{3}{4}}}").text
    '\\\\sqrt{\\\\frac{3}{4}}'
    >>> find_boxed(r"roots \\boxed{1}, \\boxed{-2}.").text
    '1, -2'
    """
    spans = _boxed_spans(text)
    if not spans:
        return None
    items = [spans[-1][2]]
    start = spans[-1][0]
    for (previous_start, end, content), (next_start, _, _) in zip(reversed(spans[:-1]), reversed(spans[1:])):
        if not _is_list_gap(text[end:next_start]):
            break
        start = previous_start
        if content != items[-1]:
            items.append(content)
    return FoundAnswer(", ".join(reversed(items)), start, math_mode=True)


# ---------------------------------------------------------------------------------------------
# answer phrase

_PHRASE_RE = re.compile(
    r"(?:final\s+answer|\banswer)\s*(?:\*\*)?\s*(?:is\b|:|=)\s*(?:\*\*)?\s*:?\s*", re.IGNORECASE
)
_ENV_OPENERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_PHRASE_MAX_CHARS = 300


def _leading_environment(snippet: str) -> FoundAnswer | None:
    """The math environment (with its delimiters) or boxed answer at the start of snippet."""
    if snippet.startswith(("\\boxed", "\\fbox")):
        spans = _boxed_spans(snippet)
        return FoundAnswer(spans[0][2], 0, math_mode=True) if spans and spans[0][0] == 0 else None
    for opener, closer in _ENV_OPENERS:
        if snippet.startswith(opener):
            end = snippet.find(closer, len(opener))
            while end > 0 and snippet[end - 1] == "\\" and closer == "$":  # skip an escaped \$
                end = snippet.find(closer, end + 1)
            return FoundAnswer(snippet[: end + len(closer)], 0, math_mode=False) if end > 0 else None
    return None


def find_answer_phrase(text: str) -> FoundAnswer | None:
    """What the last "answer is" / "answer:" phrase announces.

    >>> find_answer_phrase("So the answer is 4 4/9. Done").text
    '4 4/9'
    >>> find_answer_phrase("Final Answer: The final answer is $(0, 1)$. I hope it is correct.").text
    '$(0, 1)$'
    """
    last = None
    for match in _PHRASE_RE.finditer(text):
        last = match
    if last is None:
        return None
    raw = text[last.end() : last.end() + _PHRASE_MAX_CHARS]
    snippet = raw.lstrip("\"' ")
    offset = last.end() + len(raw) - len(snippet)
    environment = _leading_environment(snippet)
    if environment is not None:
        return FoundAnswer(environment.text, offset, environment.math_mode)
    end = re.search(r"\.(?:\s|$)|\n|\bI hope\b", snippet)
    answer = (snippet[: end.start()] if end else snippet).strip()
    return FoundAnswer(answer, offset, math_mode=False) if answer else None


def find_final_answer(text: str) -> FoundAnswer | None:
    """Whichever the response announces last: its last boxed answer or its last answer phrase.

    >>> find_final_answer(r"so $x = \\boxed{255}$. In all: The final answer is $10,455$.").text
    '$10,455$'
    """
    found = [answer for answer in (find_boxed(text), find_answer_phrase(text)) if answer is not None]
    return max(found, key=lambda answer: answer.start, default=None)


# ---------------------------------------------------------------------------------------------
# last number

_NUMBER_RE = re.compile(
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s+\d+/\d+|\s*/\s*\d+)?|(?<![\w.])\.\d+"
)


def find_last_number(text: str) -> FoundAnswer | None:
    """The last number written in the text, thousands commas removed.

    >>> find_last_number("we get 12, then 1,000.5 apples").text
    '1000.5'
    >>> find_last_number("no digits here") is None
    True
    """
    last = None
    for match in _NUMBER_RE.finditer(text):
        last = match
    return None if last is None else FoundAnswer(last.group(0).replace(",", ""), last.start(), math_mode=True)


def find_whole(text: str) -> FoundAnswer | None:
    """The whole text, for answers that were extracted already (most references)."""
    return FoundAnswer(text.strip(), 0, math_mode=False) if text.strip() else None


# ---------------------------------------------------------------------------------------------
# from an answer string to something math-verify parses

_DELIMITER_RE = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox")
_PROSE_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}\s+[a-zA-Z]{2,}(?![a-zA-Z]*\})")
_MIXED_RE = re.compile(r"([-+]?)(\d{1,18})\s+(\d{1,18})\s*/\s*(\d{1,18})")
_SPACED_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?")


def is_bare_answer(answer: str) -> bool:
    """True for an answer written as bare math ("x^2+1", "\\frac{1}{2}"); False when it is a
    document for math-verify to search: it marks its math itself ($...$, \\(...\\), \\[...\\],
    \\boxed) or reads as prose (two words in a row outside \\text{})."""
    return _DELIMITER_RE.search(answer) is None and _PROSE_RE.search(answer) is None


def as_latex_source(answer: str, math_mode: bool) -> str:
    """How a found answer is handed to math-verify.

    Delimited text and prose are kept (math-verify finds the math in them); a bare answer, or
    any answer in math mode (a boxed one, even "12 $ and $ 13"), is LaTeX: it is wrapped in
    $...$. A mixed number "4 4/9" becomes 40/9 (the convention of math answers; "11 7/6" is not
    a mixed number and is left alone), "1 000" becomes 1000.

    >>> as_latex_source(r"\\frac{1}{2}", math_mode=False)
    '$\\\\frac{1}{2}$'
    >>> as_latex_source("-4 4/9", math_mode=False), as_latex_source("1 000", math_mode=True)
    ('$-40/9$', '$1000$')
    >>> as_latex_source("Jane started 3 hours ago", math_mode=False)
    'Jane started 3 hours ago'
    """
    answer = answer.strip()
    mixed = _MIXED_RE.fullmatch(answer)
    if mixed is not None and int(mixed.group(3)) < int(mixed.group(4)):
        sign, whole, numerator, denominator = mixed.group(1), *map(int, mixed.groups()[1:])
        answer = f"{'-' if sign == '-' else ''}{whole * denominator + numerator}/{denominator}"
    elif _SPACED_THOUSANDS_RE.fullmatch(answer):
        answer = answer.replace(" ", "")
    return f"${answer}$" if math_mode or is_bare_answer(answer) else answer


# ---------------------------------------------------------------------------------------------
# guards


@dataclass(frozen=True)
class GuardLimits:
    """Bounds on one answer string; see MathRewardConfig for what each one protects."""

    max_chars: int
    max_digits: int
    max_nesting_depth: int
    max_exponent: int


_DIGITS_RE = re.compile(r"\d+")
_POWER_CHAIN_RE = re.compile(r"\d+(?:\s*(?:\^|\*\*)\s*\{?\s*\d+)+")
_EXPONENT_DEPTH_LIMIT = 3  # a^{b^{c^{d}}} is refused whatever its base: nobody answers with that


def _nesting_depth(text: str) -> int:
    """Deepest nesting of (, [, { (unbalanced interval brackets do not go below zero)."""
    depth = deepest = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}" and depth > 0:
            depth -= 1
    return deepest


def _exponent_depth(text: str) -> int:
    """Deepest stack of exponents: x^2 is 1, e^{x^2} is 2, 2^{2^{2^{2}}} is 4."""
    group_is_exponent: list[bool] = []
    deepest = 0
    previous = ""  # last non-blank character
    for char in text:
        if char == "^":
            deepest = max(deepest, 1 + sum(group_is_exponent))
        elif char == "{":
            group_is_exponent.append(previous == "^")
        elif char == "}" and group_is_exponent:
            group_is_exponent.pop()
        if not char.isspace():
            previous = char
    return deepest


def _largest_exponent(chain: str, cap: int) -> int:
    """Largest exponent of an integer power chain 'a^{b^{c}}', evaluated right to left, or cap+1."""
    numbers = [int(n) for n in _DIGITS_RE.findall(chain)]
    exponent = numbers[-1]
    largest = exponent
    for base in reversed(numbers[1:-1]):
        # base ** exponent, without computing it when it would pass the cap
        if base > 1 and exponent * math.log10(base) > math.log10(cap + 1):
            return cap + 1
        exponent = base**exponent
        largest = max(largest, exponent)
    return largest


def guard_reason(answer: str, limits: GuardLimits) -> str | None:
    """Why this answer is refused before it reaches sympy, or None when it is safe to parse.

    >>> limits = GuardLimits(max_chars=1000, max_digits=500, max_nesting_depth=10, max_exponent=10**6)
    >>> guard_reason(r"2^{2^{2^{2^{100}}}}", limits)
    'power tower: exponents nested 4 deep (limit 2)'
    >>> guard_reason(r"\\frac{1}{2}", limits) is None
    True
    """
    if len(answer) > limits.max_chars:
        return f"answer of {len(answer)} characters (limit {limits.max_chars})"
    longest = max((len(run) for run in _DIGITS_RE.findall(answer)), default=0)
    if longest > limits.max_digits:
        return f"integer of {longest} digits (limit {limits.max_digits})"
    depth = _nesting_depth(answer)
    if depth > limits.max_nesting_depth:
        return f"brackets nested {depth} deep (limit {limits.max_nesting_depth})"
    depth = _exponent_depth(answer)
    if depth >= _EXPONENT_DEPTH_LIMIT:
        return f"power tower: exponents nested {depth} deep (limit {_EXPONENT_DEPTH_LIMIT - 1})"
    for chain in _POWER_CHAIN_RE.findall(answer):
        if _largest_exponent(chain, limits.max_exponent) > limits.max_exponent:
            return f"power tower: {chain[:40]!r} has an exponent above {limits.max_exponent}"
    return None


# ---------------------------------------------------------------------------------------------
# finding and parsing an answer with math-verify (imported lazily: only workers need sympy)


class AnswerRefused(Exception):
    """An answer, or a math-verify call, that must become an error verdict (detail in the message)."""


@dataclass
class ParsedAnswer:
    """An answer as found (`extracted`) and as math-verify parsed it."""

    extracted: str
    parsed: list[Any]  # math-verify's parse result: sympy objects and/or strings


def _targets(formats: Sequence[str]) -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # boxed first: a boxed answer wins over other LaTeX in the same text, as math-verify's tests use
    table = {"latex": LatexExtractionConfig(boxed_match_priority=0), "expr": ExprExtractionConfig()}
    return [table[name] for name in formats]


def _parse(text: str, formats: Sequence[str], library_timeout: int) -> list[Any]:
    from math_verify import parse
    from math_verify.errors import TimeoutException

    try:
        return parse(text, _targets(formats), parsing_timeout=library_timeout, raise_on_error=True)
    except TimeoutException:
        raise AnswerRefused(f"math-verify timed out parsing {text[:60]!r}") from None
    except Exception as err:  # noqa: BLE001 - any library failure becomes an error verdict
        raise AnswerRefused(f"math-verify failed parsing {text[:60]!r}: {type(err).__name__}") from None


FINDERS: dict[str, Callable[[str], FoundAnswer | None]] = {
    "final_answer": find_final_answer,
    "boxed": find_boxed,
    "answer_phrase": find_answer_phrase,
    "last_number": find_last_number,
    "whole": find_whole,
}


def _refuse_if_pathological(answer: str, strategy: str, limits: GuardLimits) -> None:
    reason = guard_reason(answer, limits)
    if reason is not None:
        raise AnswerRefused(f"refused ({strategy}): {reason}")


def find_answer(
    text: str, strategies: Sequence[str], formats: Sequence[str], limits: GuardLimits, library_timeout: int
) -> ParsedAnswer | None:
    """The first strategy that yields a parseable answer; AnswerRefused for pathological answers.

    A bare answer is guarded before math-verify parses it; a document (text with $...$ or prose,
    or the whole text for "math_verify") is searched by math-verify first and what it extracted
    is guarded before any comparison.
    """
    for strategy in strategies:
        if strategy == "math_verify":
            found: FoundAnswer | None = FoundAnswer(text, 0, math_mode=False)  # the text as one document
        else:
            found = FINDERS[strategy](text)
        if found is None:
            continue
        if strategy != "math_verify" and (found.math_mode or is_bare_answer(found.text)):
            _refuse_if_pathological(found.text, strategy, limits)
            parsed = _parse(as_latex_source(found.text, found.math_mode), formats, library_timeout)
            extracted = found.text
        else:  # a document: math-verify searches it, then what it extracted is guarded
            parsed = _parse(found.text, formats, library_timeout)
            strings = [item for item in parsed if isinstance(item, str)]
            extracted = strings[-1] if strings else ""  # str() of a sympy object can itself hang
            if parsed:
                _refuse_if_pathological(extracted, strategy, limits)
        if parsed:
            return ParsedAnswer(extracted, parsed)
    return None
