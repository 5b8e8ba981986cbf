"""Write a run directory's report: one HTML file with the data embedded and the page's own script.

What is read (each file optional; a missing one leaves its section out):

  summary.json                 key figures of the demo          -> "Summary"
  sft_metrics.jsonl, rl_...    one object per step              -> "Learning curves", a curve per numeric key
  rollouts/<iteration>.jsonl   one object per RL sample         -> "Rollouts": tables, groups, problems,
                                                                   histograms, token log-prob heat maps
  eval_<name>.json             an evaluation's figures          -> "Evaluation"
  eval_<name>_samples.jsonl    its samples                      -> "Evaluation", a table per name
  long2short.json              a list of rows                   -> "Long2short"
  config.yaml                  the resolved config              -> "Config"

The page is `report.html` with `report.css`, `charts.js` and `report.js` of this package inlined,
and the data as JSON in a `<script type="application/json">` block. Every `<`, `>` and `&` in that
JSON is written as a \\u escape, so a response containing `</script>` or `<!--` cannot end the block
(the HTML spec's script-data states only look for `<`); the page puts every string into the DOM as
text, never as markup.

Per-token data (`logprobs`, `token_texts`) is most of a run's bytes (about 90% at 150 tokens a
response) and is only needed when a sample is opened, so it goes into a second block after the
page's script (the first render does not wait for the browser to read it), one JSON line per
sample, parsed a line at a time on demand; the sample keeps the line's number (`token_line`).
A line holds `milli` (log-probs in thousandths, rounded: a heat map needs no more) and the token
texts: as `lengths`, characters per token of the response, when the texts spell it, with `tail`,
the texts of tokens after it (an end-of-sequence token the response's decoding skipped); else as
`texts`. This makes the page about 30% smaller (benchmarks/view.py, 10,000 samples of 150
one-character tokens: 21.5 -> 15.5 MB).

A JSONL file whose last line is cut short (a run still writing) is read without that line.

Not done here: serving, live refresh, comparing two runs in one page.
"""

from __future__ import annotations

import html
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

PHASES = ("sft", "rl")
EVAL_FILE = re.compile(r"eval_(?P<name>.+)\.json")

# (section id, heading, the payload key it needs); the page fills each section present.
SECTIONS = (
    ("summary", "Summary", "summary"),
    ("curves", "Learning curves", "metrics"),
    ("rollouts", "Rollouts", "rollouts"),
    ("evaluation", "Evaluation", "evals"),
    ("long2short", "Long2short", "long2short"),
    ("config", "Config", "config"),
)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of `run_dir` to `out` (default `run_dir / "report.html"`) and return its path."""
    run_dir = Path(run_dir)
    out = run_dir / "report.html" if out is None else Path(out)
    page = render_page(read_run(run_dir), title=run_dir.resolve().name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8", errors="replace")  # a lone surrogate in a response: "?"
    return out


def read_run(run_dir: Path) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict; keys of missing files are absent."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"report: {run_dir} is not a directory; pass a run directory (run.output_dir of a run)")
    data: dict[str, Any] = {}
    summary = _read_json(run_dir / "summary.json")
    if summary is not None:
        data["summary"] = summary
    metrics = {phase: rows for phase in PHASES if (rows := read_jsonl(run_dir / f"{phase}_metrics.jsonl"))}
    if metrics:
        data["metrics"] = metrics
    rollouts = read_rollouts(run_dir / "rollouts")
    if rollouts:
        data["rollouts"] = rollouts
    evals = read_evals(run_dir)
    if evals:
        data["evals"] = evals
    long2short = _read_json(run_dir / "long2short.json")
    if long2short is not None:
        if not isinstance(long2short, list):
            raise ValueError(f"report: {run_dir / 'long2short.json'} should hold a list of rows, "
                             f"found {type(long2short).__name__}")
        data["long2short"] = long2short
    config = run_dir / "config.yaml"
    if config.is_file():
        data["config"] = config.read_text(encoding="utf-8", errors="replace")
    return data


def read_rollouts(folder: Path) -> list[dict[str, Any]]:
    """All samples of `rollouts/<iteration>.jsonl`, in iteration order."""
    if not folder.is_dir():
        return []
    files = sorted((int(path.stem), path) for path in folder.glob("*.jsonl") if path.stem.isdigit())
    samples = []
    for iteration, path in files:
        for row in read_jsonl(path):
            row.setdefault("step", iteration)
            samples.append(row)
    return samples


def read_evals(run_dir: Path) -> list[dict[str, Any]]:
    """One entry per `eval_<name>.json` (or samples file alone): name, result and samples."""
    names = {m["name"] for path in run_dir.glob("eval_*.json") if (m := EVAL_FILE.fullmatch(path.name))}
    names |= {path.name[len("eval_"):-len("_samples.jsonl")] for path in run_dir.glob("eval_*_samples.jsonl")}
    evals = []
    for name in sorted(names):
        result = _read_json(run_dir / f"eval_{name}.json")
        samples = read_jsonl(run_dir / f"eval_{name}_samples.jsonl")
        if result is None and not samples:
            continue
        evals.append({"name": name, "result": result, "samples": samples})
    return evals


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSONL file (empty when it does not exist); a cut-short last line is dropped,
    as a run still writing leaves one; a bad line elsewhere is a ValueError naming it."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"report: {path}:{number} is not a JSON object ({err}); fix or remove that line") from None
    return rows


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"report: {path} is not valid JSON ({err}); fix it or move it aside") from None


def split_tokens(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`data` with every sample's per-token data moved out, and those as embedded JSON lines.

    >>> page, lines = split_tokens({"rollouts": [{"output": "ab", "logprobs": [-0.0004, -1.23456, -0.5],
    ...                                           "token_texts": ["a", "b", "[end]"]}, {"output": "c"}]})
    >>> page["rollouts"]
    [{'output': 'ab', 'token_line': 0}, {'output': 'c'}]
    >>> lines
    ['{"milli":[0,-1235,-500],"lengths":[1,1],"tail":["[end]"]}']
    """
    lines: list[str] = []

    def strip(row: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(row.get("logprobs"), list):
            return row
        row = dict(row)
        logprobs, texts = row.pop("logprobs"), row.pop("token_texts", None)
        line: dict[str, Any] = {"milli": [round(x * 1000) if isinstance(x, (int, float)) and math.isfinite(x) else None
                                          for x in logprobs]}
        if isinstance(texts, list):
            line.update(_token_layout([str(text) for text in texts], str(row.get("output", ""))))
        row["token_line"] = len(lines)
        lines.append(embed_json(line))
        return row

    page = dict(data)
    if "rollouts" in data:
        page["rollouts"] = [strip(row) for row in data["rollouts"]]
    if "evals" in data:
        page["evals"] = [{**entry, "samples": [strip(row) for row in entry["samples"]]} for entry in data["evals"]]
    return page, lines


def _token_layout(texts: list[str], output: str) -> dict[str, list]:
    """`texts` as lengths of the pieces of `output` they spell and the texts after it, when they
    start by spelling it exactly; else as they are."""
    at, lengths = 0, []
    for text in texts:
        if at == len(output):
            break
        if not output.startswith(text, at):
            return {"texts": texts}
        at += len(text)
        lengths.append(len(text))
    if at != len(output):
        return {"texts": texts}
    tail = texts[len(lengths):]
    return {"lengths": lengths, "tail": tail} if tail else {"lengths": lengths}


def embed_json(data: Any) -> str:
    """`data` as JSON that is safe inside a `<script>` element: no `<`, `>` or `&` appears literally
    (in JSON they can only stand inside strings, where a \\u escape means the same character).
    NaN and infinities, which JSON.parse rejects, become null."""
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:  # a non-finite float somewhere: the rare case pays for a second pass
        text = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    # U+2028/2029 are valid in JSON strings; escaping them keeps the block valid as a JS literal too.
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def render_page(data: dict[str, Any], title: str) -> str:
    """The HTML page for `data` (as `read_run` returns it)."""
    page_data, token_lines = split_tokens(data)
    present = [(section_id, heading) for section_id, heading, key in SECTIONS if key in data]
    nav = "".join(f'<li><a href="#{section_id}">{heading}</a></li>' for section_id, heading in present)
    sections = "\n".join(
        f'<section id="{section_id}" aria-labelledby="{section_id}-heading">'
        f'<h2 id="{section_id}-heading">{heading}</h2><div class="fill"></div></section>'
        for section_id, heading in present)
    num_samples = len(data.get("rollouts", []))
    num_iterations = len({row.get("step") for row in data.get("rollouts", [])})
    subtitle = (f"{num_samples} rollout samples over {num_iterations} iterations" if num_samples
                else "no rollout samples logged")
    script = _asset("charts.js") + "\n" + _asset("report.js")
    assert "</script" not in script.lower(), "the page's own script must not close its <script> element"
    parts = {
        "title": html.escape(title),
        "subtitle": html.escape(subtitle),
        "nav": nav or "<li>nothing to show: the directory holds none of the files a run writes</li>",
        "sections": sections,
        "css": _asset("report.css"),
        "js": script,
        "data": embed_json(page_data),
        "tokens": "\n".join(token_lines),
    }
    # One pass over the template: text put in is never searched again for a @@name@@.
    return re.sub(r"@@(\w+)@@", lambda match: parts[match[1]], _asset("report.html"))


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
