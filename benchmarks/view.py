"""How long the run report takes to write and to render, for a run of 10,000 rollout samples.

Builds a synthetic run directory (`synthetic_run` of tests/view/test_report.py: 125 iterations of
10 problems * k = 8 samples, each with per-token log-probs and token texts, plus metrics, two
evaluations and long2short), writes `report.html` with `mirrorl.view.write_report`, and opens it
`--repeats` times in headless Chromium.

  render_ms         median over the loads of the page's own `performance.now()` (ms since navigation
                    start) at the end of its first render, layout forced: reading the file, parsing
                    the HTML and the embedded JSON, building every section (a page of the rollout
                    table; evaluation samples are built when opened). The first paint is not in it.
  script_ms         the part of it spent in the page's script (JSON.parse, sections, layout); the
                    rest is loading and parsing the HTML.
  load_event_ms     when the whole file has been read, including the per-token block after the
                    script (a sample's heat map needs it).
  chromium_seconds  the browser process's wall time: start-up and `--dump-dom` of a 15 MB DOM.
  load_average      the machine's 1-minute load average before and after: on 2 cores, other work
                    running at the same time stretches every figure.

Usage: python benchmarks/view.py [--samples 10000] [--repeats 3] [--no-logprobs] [--out DIR]
Needs `chromium` on PATH. Prints one JSON object as its last line; the target is render_ms < 2000.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mirrorl.view import write_report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "view"))
from test_report import CHROMIUM, chromium, render_ms, synthetic_run  # noqa: E402

PROBLEMS_PER_ITERATION, K = 10, 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000, help="rollout samples (a multiple of 80)")
    parser.add_argument("--repeats", type=int, default=3, help="page loads to take the median of")
    parser.add_argument("--no-logprobs", action="store_true", help="leave out per-token log-probs and token texts")
    parser.add_argument("--out", default=None, help="where to write the run (default: a temporary directory)")
    args = parser.parse_args()
    if CHROMIUM is None:
        raise SystemExit("benchmarks/view.py needs chromium on PATH (apt-get install chromium)")
    iterations = max(1, args.samples // (PROBLEMS_PER_ITERATION * K))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        run = synthetic_run(Path(args.out or scratch) / "run", iterations=iterations,
                            problems_per_iteration=PROBLEMS_PER_ITERATION, k=K, logprobs=not args.no_logprobs)
        began = time.perf_counter()
        page = write_report(run)
        write_seconds = time.perf_counter() - began
        loads = []
        for repeat in range(args.repeats):
            rendered = chromium(page, "--dump-dom")
            if rendered.console or 'data-errors="0"' not in rendered.dom:
                raise SystemExit(f"the page reported errors: {rendered.console}")
            parts = json.loads(html.unescape(re.search(r'data-section-ms="([^"]*)"', rendered.dom)[1]))
            load_ms = float(re.search(r'data-load-ms="([\d.]+)"', rendered.dom)[1])
            loads.append((render_ms(rendered.dom), rendered.seconds, parts, load_ms))
            print(f"load {repeat + 1}: render {loads[-1][0]:.0f} ms (in the page's script: {parts}), "
                  f"load event {load_ms:.0f} ms, chromium {rendered.seconds:.2f} s", file=sys.stderr)
        result = {
            "samples": iterations * PROBLEMS_PER_ITERATION * K,
            "iterations": iterations,
            "logprobs": not args.no_logprobs,
            "html_bytes": page.stat().st_size,
            "write_seconds": round(write_seconds, 3),
            "render_ms": round(statistics.median(load[0] for load in loads), 1),
            "render_ms_each": [load[0] for load in loads],
            "script_ms": round(statistics.median(sum(load[2].values()) for load in loads), 1),
            "load_event_ms": round(statistics.median(load[3] for load in loads), 1),
            "chromium_seconds": round(statistics.median(load[1] for load in loads), 2),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "target_render_ms": 2000,
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
