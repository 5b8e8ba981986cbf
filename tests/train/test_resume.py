"""Exact resume: interrupted runs continue bit for bit, at epoch boundaries and past the last iteration.

Wall-clock figures (metric keys starting with `time_` or ending in `_per_second`) differ between
any two runs by nature, so every comparison of metrics files here drops exactly those keys and
compares the rest line for line; everything else (rewards, losses, KL, buffer sizes, ...) must be
equal to the last bit, as must the final weights.
"""

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mirrorl.config import load_config
from mirrorl.recipes import run_dpo, run_rl, run_sft
from mirrorl.train.checkpoint import find_latest
from mirrorl.train.metrics import MetricsLogger
from mirrorl.train.resume import TrainingStopped
from mirrorl.train.sft import BucketedBatches, SFTExample

HERE = Path(__file__).parent


@pytest.fixture
def tiny_policy(tiny_policy_dir) -> Path:
    return tiny_policy_dir


def rl_overrides(policy: Path, out: Path, iterations: int) -> list[str]:
    """Partial rollouts (budget 8 of 24 tokens, so the buffer carries trajectories across iterations),
    the prioritized sampler, the length penalty with a warm-up, a reward that varies and sometimes raises."""
    return [
        f"rl.init_from={policy}", f"run.output_dir={out}", f"rl.iterations={iterations}", "run.num_threads=1",
        "run.tensorboard=false", "data.num_rl=24", "data.num_eval=4", "data.num_sft=4",
        "rl.problems_per_iteration=3", "algo.num_samples=3", "rollout.max_new_tokens=24", "rl.segment_budget=8",
        "sampler.name=prioritized", "sampler.ema=0.5", "algo.length_penalty.weight=0.2",
        "algo.length_penalty.warmup_iterations=4", "rl.reward=toy_rewards:varied", "rl.lr=1e-3",
        "rl.save_every=3", "checkpoint.keep_last=2",
    ]


def metric_rows(path: Path) -> list[dict]:
    """The metrics file without its wall-clock figures (see the module docstring)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not (k.startswith("time_") or k.endswith("_per_second"))} for row in rows]


def assert_same_run(expected: Path, actual: Path, phase: str) -> None:
    want = load_file(expected / phase / "final" / "model.safetensors")
    got = load_file(actual / phase / "final" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert metric_rows(actual / f"{phase}_metrics.jsonl") == metric_rows(expected / f"{phase}_metrics.jsonl")


def final_state(run_dir: Path, phase: str) -> dict:
    return json.loads((find_latest(run_dir / "checkpoints" / phase).path / "state.json").read_text())


def test_resume_with_more_iterations_trains_exactly_the_extra_ones(tiny_policy, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(HERE))
    run_rl(load_config(None, rl_overrides(tiny_policy, tmp_path / "whole", 7)))
    run_rl(load_config(None, rl_overrides(tiny_policy, tmp_path / "split", 4)))
    state = final_state(tmp_path / "split", "rl")
    buffered = [t for group in state["rollouts"]["groups"].values() for t in group]
    assert state["iteration"] == 4 and any(t["response_ids"] for t in buffered), "the buffer must carry tokens over"
    assert all(len(t["versions"]) == len(t["response_ids"]) == len(t["logprobs"]) for t in buffered)
    capsys.readouterr()
    run_rl(load_config(None, rl_overrides(tiny_policy, tmp_path / "split", 7)), "resume")
    assert "rl: 3 iterations" in capsys.readouterr().err
    assert_same_run(tmp_path / "whole", tmp_path / "split", "rl")
    assert final_state(tmp_path / "split", "rl") == final_state(tmp_path / "whole", "rl")
    rows = metric_rows(tmp_path / "split" / "rl_metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(7))
    assert sum(r["reward_errors"] for r in rows) > 0  # the raising reward was exercised, and did not stop the run
    assert max(r["off_policy_token_fraction"] for r in rows) > 0  # trajectories spanned iterations
    # a finished run: resuming trains nothing and says so
    run_rl(load_config(None, rl_overrides(tiny_policy, tmp_path / "split", 7)), "resume")
    err = capsys.readouterr().err
    assert "rl: the checkpoint already completes all 7 iterations; nothing to train" in err
    assert "rl: 0 iterations" in err
    assert_same_run(tmp_path / "whole", tmp_path / "split", "rl")


def test_a_reward_failing_on_every_sample_stops_after_a_checkpoint_and_the_run_resumes(tiny_policy, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    run_rl(load_config(None, rl_overrides(tiny_policy, tmp_path / "whole", 5)))
    broken = rl_overrides(tiny_policy, tmp_path / "fixed", 5) + ["rl.reward=toy_rewards:always_raises"]
    cause = r"the reward function scored none of \d+ samples \(\d+ raised, first: ZeroDivisionError: division by zero"
    with pytest.raises(TrainingStopped, match=cause) as stopped:
        run_rl(load_config(None, broken))
    found = find_latest(tmp_path / "fixed" / "checkpoints" / "rl")
    assert stopped.value.checkpoint == found.path and stopped.value.exit_code == 1
    # the checkpoint is the start of the failing iteration: fixing the reward loses nothing
    run_rl(load_config(None, rl_overrides(tiny_policy, tmp_path / "fixed", 5)), "resume")
    assert_same_run(tmp_path / "whole", tmp_path / "fixed", "rl")


SFT_TOY = [
    "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
    "data.num_sft=64", "data.num_rl=4", "data.num_eval=4", "sft.batch_size=16", "sft.steps=8",
    "sft.save_every=2", "checkpoint.keep_last=10", "run.tensorboard=false", "run.num_threads=1",
]


def crash_after(run_dir: Path, phase: str, step: int) -> None:
    """Make `run_dir` look like a run killed after checkpoint `step`: later checkpoints, the export and
    the `latest` pointer are gone; the metrics file keeps the later steps a killed run had logged."""
    root = run_dir / "checkpoints" / phase
    for path in root.glob("step-*"):
        if int(path.name.split("-")[1]) > step:
            shutil.rmtree(path)
    (root / "latest").unlink()
    shutil.rmtree(run_dir / phase / "final")


@pytest.mark.parametrize("step", [4, 6])
def test_sft_resumes_exactly_at_an_epoch_boundary_and_inside_an_epoch(tmp_path, capsys, step):
    run_sft(load_config(None, [*SFT_TOY, f"run.output_dir={tmp_path / 'whole'}"]))
    saved = tmp_path / "whole" / "checkpoints" / "sft" / "step-000004" / "state.json"
    batches = json.loads(saved.read_text())["batches"]
    # 64 examples in batches of 16: after step 4 the iterator has used epoch 0 up and wraps on the next batch
    assert (batches["num_examples"], batches["epoch"], batches["position"]) == (64, 0, 4)
    shutil.copytree(tmp_path / "whole", tmp_path / "crashed")
    crash_after(tmp_path / "crashed", "sft", step)
    capsys.readouterr()
    run_sft(load_config(None, [*SFT_TOY, f"run.output_dir={tmp_path / 'crashed'}"]), "resume")
    err = capsys.readouterr().err
    assert f"step-{step:06d} (step {step} of 8)" in err and f"sft: {8 - step} steps" in err
    assert_same_run(tmp_path / "whole", tmp_path / "crashed", "sft")


def _legacy_batches(examples, batch_size, window_batches, rng):
    """The generator the demo was tuned with (before resume existed): the stream must not change."""
    while True:
        order = list(examples)
        rng.shuffle(order)
        window = batch_size * window_batches
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start: start + window], key=lambda e: len(e.prompt_ids) + len(e.response_ids))
            batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        yield from batches


def test_bucketed_batches_resume_anywhere_and_keep_the_original_order():
    examples = [SFTExample([i], [0] * (i % 7)) for i in range(10)]  # 10 examples, batches of 3: 4 per epoch
    legacy = _legacy_batches(examples, 3, 2, random.Random(5))
    expected = [next(legacy) for _ in range(14)]
    for cut in range(14):
        first = BucketedBatches(examples, 3, 2, seed=5)
        head = [next(first) for _ in range(cut)]
        resumed = BucketedBatches(examples, 3, 2, seed=99)  # the state, not the seed, decides
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        assert head + [next(resumed) for _ in range(14 - cut)] == expected, cut
    with pytest.raises(ValueError, match=r"saved over other examples \(10\); the data now gives 9"):
        BucketedBatches(examples[:9], 3, 2, seed=5).load_state_dict(first.state_dict())
    changed = [SFTExample([i], [1] * (i % 7)) for i in range(10)]
    with pytest.raises(ValueError, match=r"saved over other examples \(10\); the data now gives 10"):
        BucketedBatches(changed, 3, 2, seed=5).load_state_dict(first.state_dict())


def test_resumed_metrics_keep_earlier_steps_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = MetricsLogger(tmp_path, "rl", tensorboard=True)
    for step in range(6):
        first.log(step, {"reward": 1.0})
    first.close()
    with (tmp_path / "rl_metrics.jsonl").open("a") as handle:
        handle.write('{"step": 6, "rew')  # killed mid-line
    time.sleep(1.1)  # event files are named by the second they were opened in
    second = MetricsLogger(tmp_path, "rl", tensorboard=True, resume_step=3)
    assert [json.loads(line)["step"] for line in (tmp_path / "rl_metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    for step in range(3, 5):
        second.log(step, {"reward": 2.0})
    second.close()
    lines = (tmp_path / "rl_metrics.jsonl").read_text().splitlines()
    assert [(r["step"], r["reward"]) for r in map(json.loads, lines)] == [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2)]
    events = EventAccumulator(str(tmp_path / "tensorboard" / "rl"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("rl/reward")] == [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2)]


# ---------------------------------------------------------------------------------------------
# Killed for real: `mirrorl rl` in a subprocess, SIGKILL and SIGTERM at chosen points.

CHILD = """
import os, sys
from mirrorl.cli import app
from mirrorl.train import metrics, resume

point = os.environ.get("PAUSE_AT", "")  # 'save:N' inside the save of checkpoint N, 'log:N' before logging N


def pause(where):
    print("paused", where, flush=True)
    sys.stdin.readline()


write = resume.write_training_state
def slow_write(directory, trainer, *args, **kwargs):
    if point == f"save:{trainer['iteration']}":
        pause(point)  # the weights are in the temporary directory, the training state is not yet
    write(directory, trainer, *args, **kwargs)
resume.write_training_state = slow_write

log = metrics.MetricsLogger.log
def noisy_log(self, step, values):
    if point == f"log:{step}":
        pause(point)  # iteration `step` has optimized: weights, sampler and buffer differ from the checkpoint
    log(self, step, values)
    print("logged", step, flush=True)
metrics.MetricsLogger.log = noisy_log
app()
"""


class Child:
    """`mirrorl rl` in a subprocess whose stdout reports 'logged N' and 'paused WHERE'."""

    def __init__(self, args: list[str], log: Path, pause_at: str = "") -> None:
        env = {**os.environ, "PAUSE_AT": pause_at, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        self.stderr = log.open("w")
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, "rl", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=env, bufsize=0)
        self.pending = b""

    def wait_for(self, line: str, timeout: float = 120) -> None:
        """Read stdout (unbuffered, so select() sees every byte) until `line`."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.pending:
                got, self.pending = self.pending.split(b"\n", 1)
                if got.decode() == line:
                    return
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no {line!r} within {timeout} s; stderr: {self.log.read_text()[-2000:]}"
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            assert chunk, f"exited ({self.proc.wait()}) before {line!r}; stderr: {self.log.read_text()[-2000:]}"
            self.pending += chunk

    def resume_loop(self) -> None:
        """Let a paused child go on."""
        self.proc.stdin.write(b"\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 120) -> int:
        self.proc.communicate(timeout=timeout)
        self.stderr.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.finish()


@pytest.mark.slow
def test_killed_and_resumed_runs_end_bit_identical(tiny_policy, tmp_path):
    """SIGKILL inside a checkpoint save, SIGKILL after an iteration optimized but before it was logged,
    SIGTERM (clean stop with a checkpoint), SIGKILL at a time not synchronised with the loop, then a
    final resume: the weights, the metrics and the final state equal those of an uninterrupted run."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    reference = Child(rl_overrides(tiny_policy, whole, 12), tmp_path / "whole.log")
    args = rl_overrides(tiny_policy, cut, 12)
    child = None
    try:
        child = Child(args, tmp_path / "1.log", pause_at="save:6")  # checkpoints every 3 iterations
        child.wait_for("paused save:6")
        child.kill()
        assert [p.name.startswith(".tmp-6-") for p in (cut / "checkpoints" / "rl").iterdir()].count(True) == 1
        assert find_latest(cut / "checkpoints" / "rl").step == 3

        child = Child([*args, "--resume"], tmp_path / "2.log", pause_at="log:7")
        child.wait_for("paused log:7")
        child.kill()
        assert find_latest(cut / "checkpoints" / "rl").step == 6

        child = Child([*args, "--resume"], tmp_path / "3.log", pause_at="log:8")
        child.wait_for("paused log:8")
        child.proc.send_signal(signal.SIGTERM)
        child.resume_loop()
        assert child.finish() == 128 + signal.SIGTERM
        where = cut / "checkpoints" / "rl" / "step-000009"
        command = " ".join(["mirrorl", "rl", *args, "--resume"])
        assert (tmp_path / "3.log").read_text().splitlines()[-1] == (
            f"error: rl stopped by SIGTERM at step 9; checkpoint saved in {where}; continue with: {command}")
        assert find_latest(cut / "checkpoints" / "rl").path == where

        child = Child([*args, "--resume"], tmp_path / "4.log")
        child.wait_for("logged 9")
        time.sleep(random.Random().uniform(0.0, 0.1))  # somewhere in iteration 10 or 11, or the final save
        child.kill()

        child = Child([*args, "--resume"], tmp_path / "5.log")
        assert child.finish() == 0, (tmp_path / "5.log").read_text()[-2000:]
        assert reference.finish() == 0, (tmp_path / "whole.log").read_text()[-2000:]
    finally:
        for proc in (reference.proc, child and child.proc):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert_same_run(whole, cut, "rl")
    assert final_state(cut, "rl") == final_state(whole, "rl")
    assert not [p for p in (cut / "checkpoints" / "rl").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("step", [2, 4])
def test_dpo_resumes_exactly_with_the_first_runs_reference(tmp_path, capsys, step):
    rows = [{"prompt": f"a={a} b={b}. sum a-b?", "chosen": f"{a}+{b}={a + b} answer:{a + b}",
             "rejected": f"a={a} b={b}:{a}+{b}={a + b} check:{a + b}-{b}={a} ok. answer:{a + b}"}
            for a in range(1, 6) for b in range(1, 5)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run_sft(load_config(None, [*SFT_TOY, f"run.output_dir={tmp_path / 'sft'}"]))  # a policy to start from
    toy = [*SFT_TOY, f"dpo.init_from={tmp_path / 'sft' / 'sft' / 'final'}", f"dpo.pairs_path={pairs}",
           "dpo.steps=6", "dpo.batch_size=8", "dpo.save_every=2"]
    run_dpo(load_config(None, [*toy, f"run.output_dir={tmp_path / 'whole'}"]))
    shutil.copytree(tmp_path / "whole", tmp_path / "crashed")
    crash_after(tmp_path / "crashed", "dpo", step)
    capsys.readouterr()
    # the reference comes from the checkpoint: a resumed run never reads dpo.init_from again
    shutil.rmtree(tmp_path / "sft")
    run_dpo(load_config(None, [*toy, f"run.output_dir={tmp_path / 'crashed'}"]), "resume")
    assert f"dpo: {6 - step} steps on 20 pairs" in capsys.readouterr().err
    assert_same_run(tmp_path / "whole", tmp_path / "crashed", "dpo")
