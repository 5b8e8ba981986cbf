"""The code sandbox fails closed: without a working bubblewrap no program runs unless backend "none"
was chosen, and `mirrorl rl rl.reward=code` stops before its first iteration with one line.

Bubblewrap is made unavailable by hiding `bwrap` from `shutil.which` (missing) or by a failing
start probe (installed but cannot start), with the per-process isolation cache emptied, so these
tests run the same on machines with and without it. Each takes well under a second except the
CLI ones, which import the training stack.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mirrorl.cli import app
from mirrorl.config import RewardsConfig
from mirrorl.rewards.batch import GuardedReward, per_sample
from mirrorl.rewards.registry import get_reward
from mirrorl.rewards.sandbox import CodeReward, SandboxUnavailable, detect_isolation, run_cli
from mirrorl.rewards.sandbox import isolation as isolation_module
from mirrorl.types import Problem

ADD_PY = "a, b = map(int, input().split())\nprint(a + b)\n"
TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 6", "output": "11"}]
PROBLEM = Problem(id="add", prompt="add two numbers", answer="", task="code", meta={"tests": TESTS})


def assert_refusal(message: str) -> None:
    """One line that names bubblewrap, how to install it, and the explicit way around it."""
    assert "\n" not in message
    assert "bubblewrap" in message and "scripts/install-bwrap.sh" in message and "apt-get install bubblewrap" in message
    assert "'none'" in message


def fake_bwrap(monkeypatch, path: str | None) -> None:
    """`shutil.which("bwrap")` gives `path`; nothing was probed yet in this process."""
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *args: path if name == "bwrap" else which(name, *args))
    monkeypatch.setattr(isolation_module, "_cache", {})


@pytest.fixture
def no_bwrap(monkeypatch):
    """`bwrap` is not on this machine."""
    fake_bwrap(monkeypatch, None)


@pytest.fixture
def bwrap_cannot_start(monkeypatch):
    """`bwrap` is installed but its start probe fails (no user namespaces), with a two-line error."""
    fake_bwrap(monkeypatch, "/usr/bin/bwrap")
    error = "bwrap: setting up uid map: Permission denied\nsecond line"
    monkeypatch.setattr(isolation_module, "_probe", lambda _: error)


def test_building_the_code_reward_refuses_without_bubblewrap(no_bwrap):
    for _ in range(2):  # the refusal is cached, and raised again on every build
        with pytest.raises(ValueError) as refused:
            get_reward("code", RewardsConfig())
        assert isinstance(refused.value, SandboxUnavailable)
        assert_refusal(str(refused.value))
        assert "not installed" in str(refused.value)
    for backend in ("bubblewrap", "auto"):  # "auto" no longer falls back
        with pytest.raises(SandboxUnavailable):
            detect_isolation(backend)


def test_building_the_code_reward_refuses_when_bubblewrap_cannot_start(bwrap_cannot_start):
    with pytest.raises(ValueError) as refused:
        get_reward("code", RewardsConfig())
    assert_refusal(str(refused.value))
    assert "cannot start here (bwrap: setting up uid map: Permission denied / second line)" in str(refused.value)


def test_the_explicit_unprotected_backend_still_scores(no_bwrap, caplog):
    isolation_module._warn_unprotected.cache_clear()  # another test in this process may have warned already
    reward = get_reward("code_unprotected", RewardsConfig())
    responses = [f"```python\n{ADD_PY}```", "```python\nprint(3)\n```"]
    assert reward(responses, [PROBLEM] * 2) == [1.0, 0.0]
    get_reward("code_unprotected", RewardsConfig())
    warnings = [r.getMessage() for r in caplog.records if "programs run unprotected" in r.getMessage()]
    assert len(warnings) == 1  # once per process, however often it is built


def test_run_cli_refuses_unless_none_is_chosen(no_bwrap, tmp_path):
    program, tests = tmp_path / "add.py", tmp_path / "tests.json"
    program.write_text(ADD_PY)
    tests.write_text(json.dumps(TESTS))
    with pytest.raises(SandboxUnavailable):
        run_cli(program, tests)
    report = run_cli(program, tests, backend="none")
    assert report["verdict"] == "ok" and report["protections"]["backend"] == "none"


def test_a_pickled_code_reward_probes_the_machine_it_runs_on(monkeypatch):
    """A reward built where bubblewrap works refuses on a worker without it: no program runs there."""
    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap on this machine to build the reward that is shipped")
    try:
        shipped = pickle.dumps(CodeReward("bubblewrap"))
    except SandboxUnavailable as err:
        pytest.skip(str(err))
    monkeypatch.setattr(isolation_module, "_probe", lambda _: "no user namespaces on the worker")
    monkeypatch.setattr(isolation_module, "_cache", {})  # the worker's own process
    on_worker = pickle.loads(shipped)
    with pytest.raises(SandboxUnavailable, match="no user namespaces on the worker"):
        on_worker(f"```python\n{ADD_PY}```", PROBLEM)
    scores = GuardedReward(per_sample(on_worker))(["```python\nprint(3)\n```"], [PROBLEM])
    assert scores.values == [None] and "SandboxUnavailable" in scores.errors[0]  # unscored, never 0


def test_rl_with_the_code_reward_stops_before_its_first_iteration(no_bwrap, tmp_path, tiny_policy_dir):
    data = tmp_path / "code.jsonl"
    data.write_text("".join(json.dumps({"id": f"add-{i}", "prompt": "Add.", "meta": {"tests": TESTS}}) + "\n"
                            for i in range(4)))
    run = tmp_path / "run"
    args = ["rl", f"run.output_dir={run}", f"rl.init_from={tiny_policy_dir}", f"data.train_path={data}",
            "data.use_chat_template=false", "rl.reward=code", "rl.iterations=1", "rl.save_every=1"]
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: the code sandbox refuses to run programs")
    assert_refusal(lines[0])
    assert not (run / "rl_metrics.jsonl").exists() and not (run / "checkpoints").exists()


def test_gen_tests_and_sandbox_run_refuse_without_bubblewrap(no_bwrap, tmp_path: Path):
    row = {"id": "sum", "statement": "Print a + b.", "solutions": [{"language": "python", "source": ADD_PY}],
           "generator": "print('1 2')\n"}
    (tmp_path / "problems.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "add.py").write_text(ADD_PY)
    (tmp_path / "tests.json").write_text(json.dumps(TESTS))
    gen_tests = ["gen-tests", str(tmp_path / "problems.jsonl"), str(tmp_path / "kept.jsonl"), "--num-inputs", "1",
                 "--num-solutions", "1", "--min-agree", "1", "--min-passing", "1", "--min-tests", "1"]
    sandbox_run = ["sandbox", "run", str(tmp_path / "add.py"), str(tmp_path / "tests.json")]
    for args in (gen_tests, sandbox_run):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert_refusal(result.output.strip())
    assert not (tmp_path / "kept.jsonl").exists()
    result = CliRunner().invoke(app, [*sandbox_run, "--backend", "none"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["verdict"] == "ok"
