"""The run report: what it embeds and how (escaping, missing files), and the page in headless Chromium.

`synthetic_run` writes a run directory of the shape a real run writes (also used by
benchmarks/view.py at 10,000 samples); one response of its last iteration is hostile markup,
`HOSTILE`, which must reach the reader as text. The browser tests need `chromium` on PATH
(`sh scripts/install-chromium.sh`); they are skipped without it.
"""

from __future__ import annotations

import html
import json
import math
import random
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mirrorl.view import read_run, write_report
from mirrorl.view.report import embed_json, read_jsonl, split_tokens

HOSTILE = "</script><b>bold</b><!-- <script>alert(1)</script> answer: 7"
FINISH = ("stop", "length", "budget", "repeat")


# ---- a synthetic run -------------------------------------------------------------------------
def _problem(rng: random.Random, index: int) -> dict:
    difficulty = rng.randint(1, 5)
    digits = {chr(ord("a") + j): rng.randint(0, 9) for j in range(difficulty + 2)}
    prompt = "Add the labelled digits. " + " ".join(f"{k}={v}" for k, v in digits.items())
    return {"problem": index, "difficulty": difficulty, "digits": digits, "prompt": prompt,
            "answer": sum(digits.values())}


def _response(rng: random.Random, problem: dict, right: bool, finish: str) -> tuple[str, bool]:
    """A chain_sum-like trace: each term restated, a running sum, some checks, a slip when not `right`."""
    total, steps = 0, []
    for label, value in problem["digits"].items():
        total += value
        steps.append(f"{label} is {value}, so the sum is {total}.")
        if rng.random() < 0.25:
            steps.append(f"Check: {total - value} + {value} = {total}.")
    if finish == "repeat":
        return " ".join(steps[:2]) + " so the sum is" * 12, False
    if finish in ("length", "budget"):
        return " ".join(steps)[: rng.randint(30, 60)], False
    answer = total if right else total + rng.choice((-2, -1, 1, 2))
    return " ".join(steps) + f" answer: {answer}", answer == problem["answer"]


def _sample(rng: random.Random, problem: dict, skill: float, logprobs: bool) -> dict:
    finish = rng.choices(FINISH, weights=(0.85, 0.07, 0.04, 0.04))[0]
    output, correct = _response(rng, problem, rng.random() < skill - 0.08 * problem["difficulty"], finish)
    # one character a token, as the demo's tokenizer, and the end-of-sequence token of a response that stopped,
    # which the response's text leaves out
    texts = list(output) + (["<eos>"] if finish == "stop" else [])
    row = {"input": problem["prompt"], "output": output, "gts": str(problem["answer"]), "problem": problem["problem"],
           "difficulty": problem["difficulty"], "correct": correct, "tokens": len(texts), "finish_reason": finish}
    if logprobs:  # a few surprising tokens
        row["token_texts"] = texts
        row["logprobs"] = [-abs(rng.gauss(0, 0.2)) - (rng.random() < 0.03) * rng.uniform(2, 6) for _ in texts]
    return row


def synthetic_run(run_dir: Path, iterations: int = 6, problems_per_iteration: int = 4, k: int = 4, seed: int = 0,
                  logprobs: bool = True, long2short: bool = True) -> Path:
    """Write a run directory with every file the report reads: iterations * problems * k rollout samples."""
    rng = random.Random(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    problems = [_problem(rng, i) for i in range(max(8, problems_per_iteration * 3))]
    (run_dir / "config.yaml").write_text(f"run:\n  seed: {seed}\nrl:\n  iterations: {iterations}\n  k: {k}\n")
    sft = [{"step": s, "loss": 2.5 * math.exp(-s / 40) + 0.1 * rng.random(), "lr": 1e-3} for s in range(200)]
    (run_dir / "sft_metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in sft))
    (run_dir / "rollouts").mkdir(exist_ok=True)
    metrics = []
    for iteration in range(iterations):
        skill = 0.5 + 0.45 * iteration / max(iterations - 1, 1)
        rows = []
        for group, problem in enumerate(rng.sample(problems, problems_per_iteration)):
            members = [_sample(rng, problem, skill, logprobs) for _ in range(k)]
            if iteration == iterations - 1 and group == 0:
                members[0].update(output=HOSTILE, tokens=len(HOSTILE) + 1, correct=problem["answer"] == 7,
                                  finish_reason="stop")
                if logprobs:
                    members[0].update(token_texts=[*HOSTILE, "<eos>"], logprobs=[-0.1] * (len(HOSTILE) + 1))
            for row in members:
                row["reward"] = float(row["correct"])
                row["length_reward"] = round(0.5 - row["tokens"] / 200, 4)
                row["repeat_penalty"] = -0.5 if row["finish_reason"] == "repeat" else 0.0
                row["score"] = row["reward"] + row["length_reward"] + row["repeat_penalty"]
                late = iteration > 0 and rng.random() < 0.2  # continued from the previous iteration's budget
                split = row["tokens"] // 3
                row["versions"] = ([[iteration - 1, split], [iteration, row["tokens"] - split]] if late
                                   else [[iteration, row["tokens"]]])
                row["off_policy_weight"] = round(rng.uniform(0.8, 1.0), 3) if late else None
            group_mean = sum(row["score"] for row in members) / k
            for row in members:
                row.update(step=iteration, group=group, advantage=row["score"] - group_mean)
            rows += members
        with (run_dir / "rollouts" / f"{iteration}.jsonl").open("w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        metrics.append({"step": iteration, "accuracy": sum(r["correct"] for r in rows) / len(rows),
                        "reward": sum(r["score"] for r in rows) / len(rows),
                        "response_tokens": sum(r["tokens"] for r in rows) / len(rows),
                        "kl": 0.01 * rng.random(), "entropy": 1.2 - 0.5 * skill, "time_iteration": 2 + rng.random()})
    (run_dir / "rl_metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    for name, skill in (("sft", 0.6), ("rl", 0.9)):
        samples = []
        for problem in problems:  # 4 samples at the training temperature, then the greedy answer
            for index, greedy in ((0, False), (1, False), (2, False), (3, False), (0, True)):
                row = _sample(rng, problem, skill + 0.1 * greedy, logprobs=False)
                samples.append({**row, "score": float(row["correct"]), "step": 0, "name": name, "sample": index,
                                "greedy": greedy})
        sampled = [row for row in samples if not row["greedy"]]
        result = {"checkpoint": f"{run_dir}/{name}/final", "pass1": sum(r["correct"] for r in sampled) / len(sampled),
                  "greedy_accuracy": skill, "mean_tokens": sum(r["tokens"] for r in sampled) / len(sampled),
                  "num_problems": len(problems), "num_samples": 4, "unscored": 0,
                  "pass1_by_difficulty": {str(d): skill - 0.05 * d for d in range(1, 6)}}
        (run_dir / f"eval_{name}.json").write_text(json.dumps(result))
        (run_dir / f"eval_{name}_samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in samples))
    (run_dir / "summary.json").write_text(json.dumps({"sft_accuracy": 0.6, "rl_accuracy": 0.9, "sft_mean_tokens": 80.5,
                                                      "rl_pass1_by_difficulty": {"1": 0.95, "5": 0.7}, "seed": seed}))
    if long2short:
        (run_dir / "long2short.json").write_text(json.dumps([{"method": "merge", "tokens": 61.0, "pass1": 0.84},
                                                             {"method": "dpo", "tokens": 48.5, "pass1": 0.82}]))
    return run_dir


# ---- headless Chromium ---------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="chromium is not installed (sh scripts/install-chromium.sh installs it)")


@dataclass
class Rendered:
    dom: str  # the DOM after the page's scripts ran, serialised
    console: list[str]  # every console message the page produced (errors, CSP violations, ...)
    seconds: float  # wall time of the browser process, start-up included


def chromium(page: Path, *flags: str, timeout: float = 120) -> Rendered:
    """Open `page` in headless Chromium with `flags` (e.g. --dump-dom); no network: a dead proxy
    and the page's own Content-Security-Policy."""
    with tempfile.TemporaryDirectory() as profile:
        command = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
                   "--no-first-run", "--disable-extensions", "--proxy-server=http://127.0.0.1:9",
                   "--enable-logging=stderr", "--v=0", *flags, page.resolve().as_uri()]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - began
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if re.search(r"CONSOLE[:(]", line)]
    return Rendered(done.stdout, console, seconds)


def render_ms(dom: str) -> float:
    """The page's own figure: ms from navigation start to the end of its first render (layout included)."""
    match = re.search(r'data-render-ms="([\d.]+)"', dom)
    assert match, "the page did not finish its first render"
    return float(match[1])


# ---- the HTML, without a browser -------------------------------------------------------------
def _embedded(page: str, block: str = "run-data") -> str:
    match = re.search(rf'<script type="[^"]+" id="{block}">(.*?)</script>', page, re.S)
    assert match
    return match[1]


def test_the_page_embeds_the_run_as_json_that_markup_in_responses_cannot_break(tmp_path):
    run = synthetic_run(tmp_path / "run")
    page = write_report(run).read_text()
    assert write_report(run) == run / "report.html"
    block, tokens = _embedded(page), _embedded(page, "run-tokens")
    for text in (block, tokens):
        assert "<" not in text and ">" not in text  # so no `</script>` or `<!--` can end a block early
    data = json.loads(block)
    assert data == json.loads(json.dumps(split_tokens(read_run(run))[0]))
    assert set(data) == {"summary", "metrics", "rollouts", "evals", "long2short", "config"}
    assert len(data["rollouts"]) == 6 * 4 * 4  # iterations * problems * k
    hostile = [row for row in data["rollouts"] if row["output"] == HOSTILE]
    assert len(hostile) == 1 and hostile[0]["step"] == 5  # the text arrives unchanged, as data
    lines = tokens.split("\n")
    assert len(lines) == 6 * 4 * 4  # every rollout sample logged its tokens; the evaluations did not
    # the response's characters as lengths of 1, its end-of-sequence token after them as text
    assert json.loads(lines[hostile[0]["token_line"]]) == {"milli": [-100] * (len(HOSTILE) + 1),
                                                           "lengths": [1] * len(HOSTILE), "tail": ["<eos>"]}
    assert HOSTILE not in page and "<b>bold</b>" not in page
    assert page.count("</script>") == 4  # the error recorder, the data, the tokens, the page's script: no other
    assert [e["name"] for e in data["evals"]] == ["rl", "sft"]
    for section in ("summary", "curves", "rollouts", "evaluation", "long2short", "config"):
        assert f'<section id="{section}"' in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing to fetch


def test_missing_files_leave_their_sections_out(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "rl_metrics.jsonl").write_text('{"step": 0, "accuracy": 0.5}\n{"step": 1, "accuracy": 0.75}\n')
    page = write_report(run, tmp_path / "elsewhere" / "r.html").read_text()
    rows = [{"step": 0, "accuracy": 0.5}, {"step": 1, "accuracy": 0.75}]
    assert json.loads(_embedded(page)) == {"metrics": {"rl": rows}}
    assert '<section id="curves"' in page
    for absent in ("summary", "rollouts", "evaluation", "long2short", "config"):
        assert f'id="{absent}"' not in page
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "nothing to show" in write_report(empty).read_text()
    with pytest.raises(ValueError, match="is not a directory"):
        write_report(tmp_path / "missing")


def test_rollouts_are_read_in_iteration_order_and_their_tokens_moved_out(tmp_path):
    folder = tmp_path / "rollouts"
    folder.mkdir()
    (folder / "10.jsonl").write_text('{"step": 10, "output": "bc", "logprobs": [-0.5, -0.25], '
                                     '"token_texts": ["b", "x"]}\n')
    (folder / "2.jsonl").write_text('{"output": "a", "logprobs": [-0.123456, -2.00049, -Infinity]}\n')
    (folder / "notes.jsonl").write_text("not an iteration\n")
    data = read_run(tmp_path)
    rows = data["rollouts"]
    assert [row["output"] for row in rows] == ["a", "bc"]  # 2 before 10: numbers, not strings
    assert rows[0]["step"] == 2  # a row without `step` takes its file's iteration
    page, lines = split_tokens(data)
    assert [row.get("token_line") for row in page["rollouts"]] == [0, 1]
    assert "logprobs" in rows[0]  # what read_run returned is left as it was
    # -0.123456 -> -123 thousandths, -2.00049 -> -2000; -inf, which JSON.parse rejects, -> null;
    # no texts: none; texts that do not make the response (x is not c): kept as texts
    assert lines == ['{"milli":[-123,-2000,null]}', '{"milli":[-500,-250],"texts":["b","x"]}']


def test_a_cut_short_last_line_is_dropped_and_a_bad_line_elsewhere_is_named(tmp_path):
    path = tmp_path / "rl_metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "acc')  # a run still writing
    assert read_jsonl(path) == [{"step": 0}, {"step": 1}]
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"rl_metrics.jsonl:2 is not a JSON object"):
        read_jsonl(path)


def test_embedded_json_escapes_what_could_end_a_script_or_a_js_string():
    text = embed_json({"output": "</script><!--\u2028&", "score": math.nan})
    assert text == '{"output":"\\u003c/script\\u003e\\u003c!--\\u2028\\u0026","score":null}'
    assert json.loads(text) == {"output": "</script><!--\u2028&", "score": None}


# ---- the page in a browser -------------------------------------------------------------------
# Appended to a copy of the report: drives the page as a reader would (choose, sort, search, open)
# and writes what it saw into <html data-drive="...">. Search waits 200 ms, hence the virtual time.
DRIVER = """<script>
(function () {
  const seen = {};
  const rollouts = document.getElementById("rollouts");
  const control = (box, text) =>
    [...box.querySelectorAll(".controls label")].find((l) => l.textContent.startsWith(text)).lastElementChild;
  const choose = (select, value) => { select.value = value; select.dispatchEvent(new Event("change")); };
  const status = () => rollouts.querySelector("[aria-live]").textContent;
  seen.first = rollouts.querySelectorAll("tbody tr").length;
  choose(control(rollouts, "iteration"), "");
  seen.all = status();
  choose(control(rollouts, "correct"), "no");
  seen.incorrect = status();
  choose(control(rollouts, "correct"), "");
  choose(control(rollouts, "finish reason"), "repeat");
  seen.repeat = status();
  choose(control(rollouts, "finish reason"), "");
  const tokens = [...rollouts.querySelectorAll("thead button")].find((b) => b.textContent === "tokens");
  tokens.click(); tokens.click();
  seen.sort = tokens.parentElement.getAttribute("aria-sort");
  const column = [...tokens.closest("tr").children].indexOf(tokens.parentElement);
  seen.longest = rollouts.querySelector("tbody tr").children[column].textContent;
  const search = control(rollouts, "search");
  search.value = "alert(1)"; search.dispatchEvent(new Event("input"));
  seen.evalTablesClosed = document.querySelectorAll("#evaluation tbody").length;
  for (const details of document.querySelectorAll("#evaluation details")) details.open = true;
  setTimeout(() => {
    seen.search = status();
    rollouts.querySelector("tbody button").click();
    const panel = rollouts.querySelector(".panel");
    seen.response = panel.querySelectorAll("pre")[1].textContent;
    seen.heatmap = [...panel.querySelectorAll(".tokens span")].map((span) => span.textContent);
    const [group, across] = panel.querySelectorAll(".pager button");
    group.click();
    seen.cards = panel.querySelectorAll(".card").length;
    across.click();
    seen.across = panel.querySelectorAll("details").length;
    seen.bold = document.querySelectorAll("main b").length;
    seen.evalTables = document.querySelectorAll("#evaluation tbody").length;
    document.documentElement.setAttribute("data-drive", JSON.stringify(seen));
  }, 400);
})();
</script>"""


@needs_chromium
def test_the_page_renders_without_errors_and_its_controls_work(tmp_path):
    run = synthetic_run(tmp_path / "run")
    page = write_report(run)
    rendered = chromium(page, "--dump-dom")
    assert rendered.console == []
    assert 'data-errors="0"' in rendered.dom
    assert render_ms(rendered.dom) > 0
    assert rendered.dom.count('class="chart"') >= 2 + 6 + 3  # sft lr+loss, 6 rl curves, 3 histograms
    assert "&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in rendered.dom  # the hostile response, as text
    driven = tmp_path / "driven.html"
    driven.write_text(page.read_text().replace("</body>", DRIVER + "</body>"))
    rendered = chromium(driven, "--dump-dom", "--virtual-time-budget=5000")
    assert rendered.console == [] and 'data-errors="0"' in rendered.dom
    seen = json.loads(html.unescape(re.search(r'data-drive="([^"]*)"', rendered.dom)[1]))
    data = read_run(run)
    rows = data["rollouts"]
    assert seen["first"] == 16  # the last iteration: 4 problems * k = 4
    assert seen["all"] == f"{len(rows)} of {len(rows)} samples match"
    assert seen["incorrect"] == f"{sum(not r['correct'] for r in rows)} of {len(rows)} samples match"
    assert seen["repeat"] == f"{sum(r['finish_reason'] == 'repeat' for r in rows)} of {len(rows)} samples match"
    assert (seen["sort"], seen["longest"]) == ("descending", str(max(r["tokens"] for r in rows)))
    assert seen["search"] == f"1 of {len(rows)} samples match"
    assert seen["response"] == HOSTILE and seen["bold"] == 0
    assert seen["heatmap"] == [*HOSTILE, "<eos>"]  # one span a token, its text as text
    assert seen["cards"] == 4  # the hostile sample's group: k responses
    hostile = next(r for r in rows if r["output"] == HOSTILE)
    assert seen["across"] == len({r["step"] for r in rows if r["problem"] == hostile["problem"]})
    assert seen["evalTablesClosed"] == 1  # the results side by side; each evaluation's samples when opened
    assert seen["evalTables"] == 1 + 2  # then the samples of rl and sft too


@needs_chromium
def test_a_screenshot_of_the_page_shows_content(tmp_path):
    from PIL import Image

    page = write_report(synthetic_run(tmp_path / "run"))
    png = tmp_path / "report.png"
    chromium(page, f"--screenshot={png}", "--window-size=1280,1600", "--hide-scrollbars")
    assert png.stat().st_size > 20_000
    with Image.open(png) as image:
        assert image.size == (1280, 1600)
        pixels = image.convert("RGB").resize((320, 400))
        colors = pixels.getcolors(maxcolors=1 << 16) or []
    assert len(colors) > 50  # text, lines and bars, not a blank or single-colour page
    white = max(count for count, color in colors if color == (255, 255, 255))
    assert white < 0.97 * 320 * 400
