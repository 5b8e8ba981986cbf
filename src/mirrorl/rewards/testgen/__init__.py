"""Test-case generation for code problems without tests (k1.5 sec. 2.3.5).

A CYaRon generator (from the row, a file, or written by a model) produces inputs; ground-truth
solutions run on them in the code sandbox; a majority vote makes the expected outputs; problems
whose solutions do not agree are dropped. Modules, one job each:
- pipeline.py   the config, problems in, kept problems and the report out (`gen_tests_cli`)
- generate.py   sandboxed runs of generators and solutions; CYaRon shipped into the sandbox
- bootstrap.py  the in-sandbox start of a generator (imports CYaRon from memory, seeds random)
- vote.py       which inputs become tests and which solutions pass them (pure)
- writer.py     generators written by a causal LM through the engine

Does not: detect problems that need a special judge, repair failing generators, or run
languages other than Python and C++.
"""

from mirrorl.rewards.testgen.generate import GeneratedInputs, generator_program, run_generator, run_on_inputs
from mirrorl.rewards.testgen.pipeline import (
    CodeProblem,
    Generator,
    GenTestsConfig,
    ProblemReport,
    Reason,
    find_generators,
    gen_tests,
    gen_tests_cli,
    make_tests,
    read_problems,
)
from mirrorl.rewards.testgen.vote import Selection, majority_output, select_tests

__all__ = [
    "CodeProblem", "GenTestsConfig", "GeneratedInputs", "Generator", "ProblemReport", "Reason", "Selection",
    "find_generators", "gen_tests", "gen_tests_cli", "generator_program", "majority_output", "make_tests",
    "read_problems", "run_generator", "run_on_inputs", "select_tests",
]  # fmt: skip
