"""CYaRon generators written by a causal LM (k1.5 sec. 2.3.5).

The report has a model (here any `mirrorl.types.Generator`, the `writer`) write a CYaRon generator
from each problem statement; its prompt is not given, so the instruction below is ours. The
response's last ```python block is the generator; a response without one leaves the problem
without a generator (reason generator_failed).

Does not: retry or repair a generator that fails, or sample several per problem.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from mirrorl.data.encode import encode_prompt
from mirrorl.rewards.sandbox import extract_program
from mirrorl.types import Generator, Request, SamplingParams

INSTRUCTION = """Write a Python 3 program that generates one random test input for the programming problem below, \
using the CYaRon library (from cyaron import *: randint, Vector, Graph, String, Sequence...).
It must print exactly one valid input to standard output, in the problem's input format, and respect every \
constraint. Vary the sizes: some inputs small, some as large as allowed. The random module is already seeded \
(the seed is also in sys.argv[1]). Do not read input or write files. Reply with the program in one ```python block.

Problem:
{statement}"""


def generator_from_response(response: str) -> str | None:
    """The last ```python block of a response, or None.

    >>> generator_from_response("Here:\\n```python\\nprint(randint(1, 9))\\n```")
    'print(randint(1, 9))\\n'
    >>> generator_from_response("```cpp\\nint main(){}\\n```") is None
    True
    """
    program = extract_program(response)
    return program.source if program is not None and program.language == "python" else None


def write_generators(
    writer: Generator,
    tokenizer: PreTrainedTokenizerBase,
    statements: Sequence[str],
    params: SamplingParams,
    seed: int,
) -> list[str | None]:
    """One CYaRon program per statement (None where the response holds no python block), in one generator call."""
    prompts = [encode_prompt(tokenizer, INSTRUCTION.format(statement=text), use_chat_template=True)
               for text in statements]
    result = writer.generate([Request(ids) for ids in prompts], params, seed)
    return [generator_from_response(tokenizer.decode(c.token_ids, skip_special_tokens=True))
            for c in result.completions]
