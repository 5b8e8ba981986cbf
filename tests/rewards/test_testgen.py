"""Test generation (k1.5 sec. 2.3.5): the vote, the sandboxed generator, the 7/10 and 9/10 rules,
the report, bad input and the model-written generator's plumbing.

The problem is "print a + b" with the CYaRon generator in data/sum_generator.py; a is in
[0, 100], so each rule is triggered by solutions that go wrong on a known subset of a. Sandbox
runs use small limits and few inputs; one test runs the report's 50/10/7/9 numbers.
"""

from __future__ import annotations

import doctest
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mirrorl.config import DataConfig, SamplingConfig
from mirrorl.data.io import load_problems
from mirrorl.models import save_policy
from mirrorl.rewards.sandbox import Limits, Program, code_reward, default_isolation
from mirrorl.rewards.testgen import (
    Generator,
    GenTestsConfig,
    Reason,
    bootstrap,
    gen_tests_cli,
    generate,
    make_tests,
    pipeline,
    read_problems,
    run_generator,
    select_tests,
    vote,
    writer,
)
from mirrorl.rewards.testgen.writer import write_generators
from mirrorl.rollout.engine import Engine

DATA = Path(__file__).parent / "data"
SUM_GENERATOR = (DATA / "sum_generator.py").read_text()
FAST = Limits(cpu_seconds=1, wall_seconds=2.0, memory_bytes=256 << 20, output_bytes=64 << 10, work_dir_bytes=16 << 20)
READ = "a, b = map(int, input().split())\n"
CORRECT = [  # ten ways to print a + b, with different whitespace
    READ + "print(a + b)\n",
    "print(sum(map(int, open(0).read().split())))\n",
    "import sys\nx = sys.stdin.read().split()\nsys.stdout.write(str(int(x[0]) + int(x[1])) + '\\n')\n",
    READ + "print(a - -b, end='  \\n\\n')\n",
    "print(eval(input().strip().replace(' ', '+')))\n",
    READ + "print(' %d ' % (a + b))\n",
    READ + "print(b + a)\n",
    READ + "s = a\nfor _ in range(b % 7):\n    s += 1\nprint(s + b - b % 7)\n",
    READ + "print(str(a + b).rjust(12))\n",
    READ + "import math\nprint(math.fsum([a, b]).__int__())\n",
]


def solutions(*sources: str) -> list[dict]:
    return [{"language": "python", "source": source} for source in sources]


def sum_row(problem_id: str, sources: list[str], generator: str | None = SUM_GENERATOR) -> dict:
    row = {"id": problem_id, "statement": "Print a + b.", "solutions": solutions(*sources)}
    return row if generator is None else {**row, "generator": generator}


def run_one(row: dict, tmp_path: Path, **settings) -> pipeline.ProblemReport:
    """make_tests on one row, read back through read_problems."""
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (problem,) = read_problems(path)
    cfg = GenTestsConfig(**{"limits": FAST, "num_workers": 2, **settings})
    generator = Generator(problem.generator, "row") if problem.generator is not None else None
    with ThreadPoolExecutor(2) as pool:
        return make_tests(problem, generator, cfg, default_isolation(), pool)


def a_of(test) -> int:
    return int(test.input.split()[0])


def assert_sums(tests) -> None:
    for test in tests:
        a, b = map(int, test.input.split())
        assert test.output.split() == [str(a + b)]


SMALL = {"num_inputs": 8, "num_solutions": 10, "min_agree": 7, "min_passing": 9, "min_tests": 4}


# --- the vote (pure) ---------------------------------------------------------------------------


def test_doctests():
    for module in (vote, writer):
        assert doctest.testmod(module).failed == 0


def test_vote_keeps_a_test_at_exactly_min_agree_and_drops_it_below():
    # 10 solutions on 2 inputs. Input 0: 7 print "5" (one with other spacing), 3 print "6" -> 7 agree.
    # Input 1: 6 print "9", 2 print "8", 2 crash (None) -> 6 agree.
    outputs = [["5", "9"]] * 6 + [["5 \n", "8"]] + [["6", "8"]] + [["6", None]] * 2
    selection = select_tests(["x", "y"], outputs, min_agree=7)
    assert [(t.input, t.output) for t in selection.tests] == [("x", "5")]
    assert selection.num_agreeing == [7, 6]
    assert selection.passed == [True] * 7 + [False] * 3  # only input 0 counts: the 7 that print 5 pass
    assert len(select_tests(["x", "y"], outputs, min_agree=6).tests) == 2  # configurable: 6 keeps input 1
    assert select_tests(["x", "y"], outputs, min_agree=6).num_passing == 6  # "5 \n" then "8": fails input 1


def test_vote_uses_the_float_tolerance_of_the_problem():
    outputs = [["0.3333333"], ["0.33333334"], ["0.3"]]
    assert select_tests(["x"], outputs, min_agree=2).tests == []
    assert select_tests(["x"], outputs, min_agree=2, float_tolerance=1e-6).num_agreeing == [2]


def test_config_rejects_thresholds_above_their_counts():
    with pytest.raises(ValueError, match="min_agree=11 exceeds num_solutions=10"):
        GenTestsConfig(min_agree=11)
    with pytest.raises(ValueError, match="min_tests=9 exceeds num_inputs=8"):
        GenTestsConfig(num_inputs=8, min_tests=9)


# --- the generator in the sandbox --------------------------------------------------------------


def test_sandbox_reports_each_tests_stdout_when_the_program_exited_normally():
    program = Program("python", "x = input()\nprint(x * 2)\nif x == 'c':\n    raise SystemExit(1)\n")
    result = generate.run_on_inputs(program, ["a", "b", "c", "d"], FAST, default_isolation())
    assert [generate.output_of(test) for test in result.tests] == ["aa\n", "bb\n", None, "dd\n"]  # none skipped
    assert result.tests[2].stdout == ""  # a crash's output is not kept


def test_bootstrap_is_the_head_of_the_generator_program():
    program = generate.generator_program("print(1)")
    assert program.source.startswith(Path(bootstrap.__file__).read_text())
    assert "'cyaron.graph': (False," in program.source and "'xeger': (True," in program.source


def test_generator_imports_cyaron_in_the_sandbox_and_gets_its_seed():
    source = ("import sys\nfrom cyaron import Graph, randint\n"
              "print(sys.argv[1], randint(1, 10**9), len(str(Graph.tree(5)).splitlines()))\n")
    generated = run_generator(source, [11, 12, 11], FAST, default_isolation())
    assert generated.num_failed == 0 and generated.num_duplicates == 1  # seed 11 twice: the same input
    assert [line.split()[0] for line in generated.inputs] == ["11", "12"]
    assert [line.split()[2] for line in generated.inputs] == ["4", "4"]  # a tree on 5 nodes has 4 edges


def test_generator_cannot_write_outside_the_sandbox_and_fails_harmlessly(tmp_path):
    target = tmp_path / "escaped.txt"
    source = ("open('scratch.txt', 'w').write('in the sandbox: fine')\n"
              f"open({str(target)!r}, 'w').write('pwned')\nprint(1, 2)\n")
    report = run_one(sum_row("escape", CORRECT, source), tmp_path, **SMALL)
    assert report.reason is Reason.GENERATOR_FAILED
    assert "Error" in report.detail  # FileNotFoundError (bubblewrap) or PermissionError (fallback, uid 65534)
    assert report.num_generator_failures == SMALL["num_inputs"]
    assert not target.exists()


def test_generator_that_loops_forever_is_stopped(tmp_path):
    report = run_one(sum_row("loop", CORRECT, "while True:\n    pass\n"), tmp_path,
                     **{**SMALL, "num_inputs": 1, "min_tests": 1})
    assert report.reason is Reason.GENERATOR_FAILED
    assert "CPU" in report.detail  # the timeout verdict's detail


# --- the rules on whole problems ---------------------------------------------------------------


def test_ten_correct_solutions_keep_the_problem_with_right_tests(tmp_path):
    sources = CORRECT
    if shutil.which("g++"):  # one of the ten in C++, named as datasets do
        sources = CORRECT[:9]
    row = sum_row("sum", sources)
    if len(sources) == 9:
        cpp = "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << '\\n'; }\n"
        row["solutions"].append({"language": "C++", "source": cpp})
    report = run_one(row, tmp_path, **SMALL)
    assert report.reason is Reason.KEPT, report.detail
    assert report.num_tests == report.num_inputs == SMALL["num_inputs"]  # 8 seeds, no duplicate in 101 * 10**6 inputs
    assert report.num_passing == 10
    assert_sums(report.tests)


def test_four_of_ten_wrong_solutions_drop_the_problem_by_the_9_of_10_rule(tmp_path):
    # Two go wrong when a is odd, two when it is even: every input has 8 agreeing solutions (kept by the
    # 7/10 rule), but with both parities among the inputs only the 6 correct pass them all: 6 < 9.
    wrong = [READ + "print(a + b + a % 2)\n", READ + "print(a + b + 2 * (a % 2))\n",
             READ + "print(a + b + 1 - a % 2)\n", READ + "print(a + b + 2 - 2 * (a % 2))\n"]  # fmt: skip
    report = run_one(sum_row("parity", CORRECT[:6] + wrong), tmp_path, **SMALL)
    assert {a_of(t) % 2 for t in report.tests} == {0, 1}, "this seed's inputs should hold both parities"
    assert report.reason is Reason.SOLUTIONS_DISAGREE
    assert (report.num_tests, report.num_passing) == (SMALL["num_inputs"], 6)
    assert "6 of 10 solutions pass every test, 9 needed" in report.detail
    # configurable: with min_passing=6 the same problem is kept
    report = run_one(sum_row("parity", CORRECT[:6] + wrong), tmp_path, **{**SMALL, "min_passing": 6})
    assert report.reason is Reason.KEPT and report.num_passing == 6
    assert_sums(report.tests)


def test_inputs_on_which_solutions_disagree_are_dropped_by_the_7_of_10_rule(tmp_path):
    # Four print noise when a > 50: there only the 6 correct agree (< 7), so those inputs are dropped;
    # on the others all 10 agree, and the four pass every kept test: the problem is kept.
    noisy = READ + "import random\nprint(a + b + (random.randint(1, 10**9) if a > 50 else 0))  # {}\n"
    report = run_one(sum_row("noisy", CORRECT[:6] + [noisy.format(i) for i in range(4)]), tmp_path, **SMALL)
    assert report.reason is Reason.KEPT, report.detail
    assert report.num_tests < report.num_inputs, "this seed's inputs should include some a > 50"
    assert all(a_of(t) <= 50 for t in report.tests) and report.num_passing == 10
    assert_sums(report.tests)
    # configurable: min_agree=6 also keeps the noisy inputs, whose output is then the correct one
    report = run_one(sum_row("noisy", CORRECT[:6] + [noisy.format(i) for i in range(4)]), tmp_path,
                     **{**SMALL, "min_agree": 6})
    assert report.num_tests == report.num_inputs and report.num_passing == 6
    assert_sums(report.tests)


def test_the_reports_numbers_50_inputs_10_solutions_7_agree_9_pass(tmp_path):
    report = run_one(sum_row("sum50", CORRECT), tmp_path)  # the defaults but FAST limits and 2 workers
    assert report.reason is Reason.KEPT, report.detail
    assert report.num_inputs + report.num_duplicate_inputs == 50 and report.num_tests == report.num_inputs >= 40
    assert report.num_passing == 10
    assert_sums(report.tests)


# --- the command's files and report --------------------------------------------------------------


def test_cli_writes_kept_rows_that_code_reward_reads_and_counts_every_reason(tmp_path):
    rows = [
        sum_row("kept", CORRECT[:3]),
        sum_row("nogen", CORRECT[:3], generator=None),
        sum_row("few", CORRECT[:2]) | {"solutions": solutions(*CORRECT[:2]) + [{"language": "java", "source": "x"}]},
        sum_row("crash", CORRECT[:3], generator="raise SystemExit(3)\n"),
        sum_row("const", CORRECT[:3], generator="print(1, 2)\n"),
        sum_row("disagree", CORRECT[:2] + [READ + "print(a + b + 1)\n"]),
        sum_row("no-tests", [READ + "print(a)\n", READ + "print(b)\n", READ + "print(a + b)\n"]),
    ]
    problems, out, report_path = (tmp_path / "in.jsonl", tmp_path / "out" / "kept.jsonl",
                                  tmp_path / "out" / "report.json")
    problems.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = {"num_inputs": 4, "num_solutions": 3, "min_agree": 2, "min_passing": 3, "min_tests": 3, "num_workers": 2}
    report = gen_tests_cli(problems, out, report_path, limits=FAST, **settings)
    assert json.loads(report_path.read_text()) == report
    assert (report["num_problems"], report["num_kept"], report["num_tests"]) == (7, 1, 4)
    assert report["reasons"] == {"kept": 1, "no_generator": 1, "too_few_solutions": 1, "generator_failed": 1,
                                 "sandbox_error": 0, "too_few_inputs": 1, "too_few_tests": 1, "solutions_disagree": 1}
    assert [p["reason"] for p in report["problems"]] == ["kept", "no_generator", "too_few_solutions",
                                                         "generator_failed", "too_few_inputs",
                                                         "solutions_disagree", "too_few_tests"]  # fmt: skip
    assert "exit code 3" in report["problems"][3]["detail"]
    assert report["problems"][4]["num_duplicate_inputs"] == 3
    (kept,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept["id"] == "kept" and kept["generator"] == SUM_GENERATOR and len(kept["meta"]["tests"]) == 4
    (problem,) = load_problems(str(out), DataConfig())  # what `mirrorl rl data.train_path=...` reads
    assert problem.prompt == kept["statement"]
    assert code_reward(f"```python\n{CORRECT[0]}```", problem) == 1.0
    assert code_reward(f"```python\n{READ}print(a * b)\n```", problem) == 0.0


def test_generator_file_and_directory_apply_where_the_row_has_none(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(sum_row("a", CORRECT[:1], generator=None)) + "\n"
                    + json.dumps(sum_row("b", CORRECT[:1], generator="print(5, 5)\n")) + "\n")  # fmt: skip
    problems = read_problems(path)
    by_file = pipeline.find_generators(problems, DATA / "sum_generator.py")
    assert by_file["a"] == Generator(SUM_GENERATOR, "file") and by_file["b"] == Generator("print(5, 5)\n", "row")
    (tmp_path / "gens").mkdir()
    (tmp_path / "gens" / "a.py").write_text("print(7, 7)\n")
    assert pipeline.find_generators(problems, tmp_path / "gens")["a"] == Generator("print(7, 7)\n", "file")
    assert "a" not in pipeline.find_generators(problems, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": 1, "statement": "s", "solutions": []}\nnot json\n', r"problems.jsonl:2: not valid JSON"),
        ('{"id": 1, "solutions": []}\n', r"problems.jsonl:1: row has no statement"),
        ('\n{"id": 1, "statement": "s"}\n', r"problems.jsonl:2: row has no 'solutions' list"),
        ('{"id": 1, "statement": "s", "solutions": [{"language": "python"}]}\n', r":1: solutions\[0\] is not"),
        ('{"id": 1, "statement": "s", "solutions": [], "float_tolerance": "x"}\n', r":1: float_tolerance must be"),
        ('{"id": 1, "statement": "s", "solutions": []}\n{"id": "1", "statement": "t", "solutions": []}\n',
         r"problems.jsonl:2: duplicate id '1'"),
        ("", r"holds no problems"),
    ],
)
def test_bad_rows_raise_one_line_naming_file_and_row(tmp_path, text, message):
    path = tmp_path / "problems.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        gen_tests_cli(path, tmp_path / "out.jsonl", tmp_path / "report.json")
    assert "\n" not in str(caught.value)


def test_bad_paths_and_settings_raise_one_line(tmp_path):
    with pytest.raises(ValueError, match="problems file .*missing.jsonl does not exist"):
        gen_tests_cli(tmp_path / "missing.jsonl", tmp_path / "o.jsonl", tmp_path / "r.json")
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(sum_row("a", CORRECT[:1])) + "\n")
    with pytest.raises(ValueError, match="generator path .*nope.py does not exist"):
        gen_tests_cli(path, tmp_path / "o.jsonl", tmp_path / "r.json", tmp_path / "nope.py")
    with pytest.raises(ValueError, match="gen-tests: min_passing=12 exceeds num_solutions=10"):
        gen_tests_cli(path, tmp_path / "o.jsonl", tmp_path / "r.json", min_passing=12)
    with pytest.raises(ValueError, match="gen-tests min_agre: Extra inputs are not permitted"):
        gen_tests_cli(path, tmp_path / "o.jsonl", tmp_path / "r.json", min_agre=3)


# --- a model writes the generator (plumbing only: a tiny untrained model writes garbage) ----------


def test_model_written_generator_plumbing(tmp_path, tiny_model):
    model, tokenizer = tiny_model
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=16, batch_size=2)
    engine = Engine(model.eval(), tokenizer.eos_token_id, tokenizer.pad_token_id)
    written = write_generators(engine, tokenizer, ["Print a + b.", "Print a * b."], sampling.params(), seed=0)
    assert written == [None, None]  # 16 random characters hold no ```python block
    save_policy(model, tokenizer, tmp_path / "tiny")
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(sum_row("m", CORRECT[:2], generator=None)) + "\n")
    report = gen_tests_cli(path, tmp_path / "o.jsonl", tmp_path / "r.json", model_path=str(tmp_path / "tiny"),
                           num_solutions=2, min_agree=2, min_passing=2, sampling=sampling, device="cpu")  # fmt: skip
    (problem,) = report["problems"]
    assert (problem["reason"], problem["generator"]) == ("generator_failed", "model")
    assert "no ```python block" in problem["detail"]
    assert (tmp_path / "o.jsonl").read_text() == ""


def test_mirrorl_gen_tests_command_prints_the_summary_and_rejects_a_missing_file(tmp_path):
    from typer.testing import CliRunner

    from mirrorl.cli import app

    correct = "a, b = map(int, input().split())\nprint(a + b)\n"
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(sum_row("sum", [correct] * 3)) + "\n")
    args = ["gen-tests", str(problems), str(tmp_path / "kept.jsonl"), "--num-inputs", "6", "--num-solutions", "3",
            "--min-agree", "3", "--min-passing", "3", "--min-tests", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["num_problems"], summary["num_kept"]) == (1, 1) and summary["num_tests"] >= 3
    assert (tmp_path / "kept.report.json").is_file()
    missing = CliRunner().invoke(app, ["gen-tests", str(tmp_path / "nope.jsonl"), str(tmp_path / "k.jsonl")])
    assert missing.exit_code == 2 and "nope.jsonl" in missing.output
