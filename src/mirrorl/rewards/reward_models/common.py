"""What the two reward models share: filling their prompt template.

Both models take (question, reference answer, response), as in k1.5 sec. 2.3.5; a template (see
`mirrorl.config.rewards`) names those three parts with
`{question}`, `{reference}` and `{response}`, filled in one pass (so a response that contains the
text "{reference}" stays as written) and leaving every other brace alone (the CoT template shows
the JSON verdict it wants).
"""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"\{(question|reference|response)\}")


def fill_template(template: str, question: str, reference: str, response: str = "") -> str:
    """Replace the three placeholders in one pass; other braces are kept.

    >>> fill_template('Q={question} R={reference} A={response} {"correct": true}', "1+1?", "2", "{reference}")
    'Q=1+1? R=2 A={reference} {"correct": true}'
    """
    parts = {"question": question, "reference": reference, "response": response}
    return _PLACEHOLDER.sub(lambda match: parts[match.group(1)], template)
