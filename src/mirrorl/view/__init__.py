"""One self-contained HTML page for a run directory: curves, rollout samples, evaluations.

`write_report(run_dir)` reads what a run wrote (metrics JSONL, `summary.json`, `rollouts/*.jsonl`,
`eval_<name>.json` and their samples, `long2short.json`, `config.yaml`), embeds it as JSON in one
HTML file with the page's own script and style, and returns the file's path. The page fetches
nothing (a Content-Security-Policy forbids it) and opens from disk.
"""

from mirrorl.view.report import read_run, write_report

__all__ = ["read_run", "write_report"]
