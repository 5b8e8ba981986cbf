"""Code problems from a file, as `mirrorl gen-tests` writes them, through SFT and RL with the sandboxed code reward."""

import json
from pathlib import Path

from mirrorl.config import load_config
from mirrorl.recipes import run_rl, run_sft

PROGRAM = "```python\nprint(sum(map(int, input().split())))\n```"
TESTS = [{"input": f"{a} {b}\n", "output": f"{a + b}\n"} for a, b in [(1, 2), (5, 7), (10, -3)]]


def test_rl_with_the_code_reward_runs_the_loaded_tests_in_the_sandbox(tmp_path: Path):
    rows = [{"id": f"add-{i}", "statement": f"Add the two numbers (#{i}).", "prompt": f"Add the two numbers (#{i}).",
             "solution": PROGRAM, "meta": {"tests": TESTS}} for i in range(4)]  # no answer: the tests are the reference
    data = tmp_path / "code.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'run'}", f"data.train_path={data}", "data.use_chat_template=false",
        "sft.steps=120", "sft.batch_size=4", "sft.lr=3e-3", "rl.reward=code", "rl.iterations=2",
        "rl.problems_per_iteration=2", "algo.num_samples=4", "rollout.max_new_tokens=64",
    ])
    run_sft(cfg)  # memorises the one program
    run_rl(cfg)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "rl_metrics.jsonl").read_text().splitlines()]
    assert [m["reward_errors"] for m in metrics] == [0, 0]
    assert min(m["accuracy"] for m in metrics) > 0.5  # the sampled programs pass in the sandbox (measured 0.75, 0.875)
