"""The code sandbox: verdicts, the code reward, and attacks that must neither escape
nor harm the host.

Every program runs in each isolation this machine has: bubblewrap (skipped, with the reason,
only when it is absent and scripts/install-bwrap.sh cannot install it) and backend "none". An
attack that needs a protection an isolation lacks is skipped, naming the protection. Limits are
small (FAST), so each run is bounded to a few seconds. Many attack programs print what they
managed; the expected output is the safe answer, so `ok` means the attack failed.
"""

from __future__ import annotations

import doctest
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mirrorl.rewards import sandbox
from mirrorl.rewards.sandbox import (
    Isolation,
    Limits,
    Program,
    TestCase,
    Verdict,
    code_reward,
    compare,
    reward,
    run_cli,
    run_program,
)
from mirrorl.rewards.sandbox.run import RUNNER_PROCESSES, memory_budget
from mirrorl.types import Problem

FAST = Limits(cpu_seconds=1, wall_seconds=1.5, memory_bytes=256 << 20, output_bytes=64 << 10, num_processes=16,
              file_bytes=1 << 20, work_dir_bytes=16 << 20)  # fmt: skip
ADD = [TestCase("1 2\n", "3\n"), TestCase("5 6", "11"), TestCase("-4 4", "0")]
ADD_PY = "a, b = map(int, input().split())\nprint(a + b)\n"
ADD_CPP = "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << '\\n'; }\n"
INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-bwrap.sh"


def _bubblewrap_or_skip() -> Isolation:
    if shutil.which("bwrap") is None:  # the script installs it when it can (root and apt)
        subprocess.run(["sh", str(INSTALL_SCRIPT)], capture_output=True, timeout=600)
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed and scripts/install-bwrap.sh could not install it "
                    "(needs root and apt)")
    try:
        return sandbox.detect_isolation("bubblewrap")
    except sandbox.SandboxUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module", params=["bubblewrap", "none"])
def isolation(request) -> Isolation:
    return _bubblewrap_or_skip() if request.param == "bubblewrap" else sandbox.detect_isolation("none")


def require(isolation: Isolation, *any_of: str) -> None:
    """Skip unless the isolation has at least one of these protections."""
    if not any(getattr(isolation.protections, name) for name in any_of):
        pytest.skip(f"the {isolation.protections.backend!r} sandbox lacks {' or '.join(any_of)}")


def run(isolation: Isolation, source: str, tests=ADD, limits: Limits = FAST, language: str = "python", **kwargs):
    start = time.monotonic()
    result = run_program(Program(language, source), tests, limits, isolation=isolation, **kwargs)
    assert time.monotonic() - start < 15, "a run must stay bounded"
    return result


def marker() -> str:
    """A unique process name (comm, at most 15 bytes): a survivor carrying it has escaped cleanup."""
    return "mrl" + secrets.token_hex(6)


def processes_named(name: str) -> list[int]:
    """Live processes with this name. Zombies are dead: when backend "none"'s runner is killed, its
    orphans' zombies go to the host's init, which reaps them in its own time."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm, stat = Path(f"/proc/{pid}/comm").read_text().strip(), Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if comm == name and stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.append(int(pid))
    return found


def assert_no_survivor(name: str) -> None:
    survivors = processes_named(name)
    for pid in survivors:  # do not leave them running on the host, then fail
        os.kill(pid, 9)
    assert not survivors, f"processes {survivors} outlived the sandbox"


SET_NAME = "import ctypes\nctypes.CDLL(None).prctl(15, b'{name}', 0, 0, 0)\n"


# --- verdicts ---------------------------------------------------------------------------------


def test_ok_all_tests_one_start(isolation):
    result = run(isolation, ADD_PY)
    assert result.verdict is Verdict.OK and len(result.tests) == 3
    assert all(t.verdict is Verdict.OK for t in result.tests)


def test_wrong_answer_names_the_output(isolation):
    result = run(isolation, "a, b = map(int, input().split())\nprint(a * b + 1)\n")
    assert result.verdict is Verdict.WRONG_ANSWER
    assert [t.verdict for t in result.tests] == [Verdict.OK, Verdict.WRONG_ANSWER, Verdict.WRONG_ANSWER]  # 3, 31, -15
    assert "'31\\n'" in result.detail


def test_whitespace_and_float_tolerance(isolation):
    program = "print(' 1.0000001 \\t\\n  2 ')\n"
    assert run(isolation, program, [TestCase("", "1\n2")], float_tolerance=1e-6).verdict is Verdict.OK
    assert run(isolation, program, [TestCase("", "1\n2")]).verdict is Verdict.WRONG_ANSWER  # no tolerance
    assert run(isolation, program, [TestCase("", "1.001 2")], float_tolerance=1e-6).verdict is Verdict.WRONG_ANSWER


def test_runtime_error_stops_at_first_failure(isolation):
    result = run(isolation, "raise SystemExit(int(input().split()[0]) == 1 and 3 or 0)\n")
    assert result.verdict is Verdict.RUNTIME_ERROR and "exit code 3" in result.detail
    assert len(result.tests) == 1  # stop_on_failure: tests 2 and 3 not run
    result = run(isolation, "1 / 0\n", limits=FAST.model_copy(update={"stop_on_failure": False}))
    assert [t.verdict for t in result.tests] == [Verdict.RUNTIME_ERROR] * 3
    assert "ZeroDivisionError" in result.detail


def test_timeout_on_wall_clock(isolation):
    result = run(isolation, "import time\ntime.sleep(60)\n", [TestCase("", "")])
    assert result.verdict is Verdict.TIMEOUT
    assert FAST.wall_seconds <= result.tests[0].wall_seconds < FAST.wall_seconds + 2


def test_cpp_ok_and_compile_error(isolation):
    if isolation.cxx is None:
        pytest.skip("g++ is not installed")
    assert run(isolation, ADD_CPP, language="cpp").verdict is Verdict.OK
    result = run(isolation, "int main() { return undefined; }\n", language="cpp")
    assert result.verdict is Verdict.RUNTIME_ERROR and result.detail.startswith("compilation failed")
    assert result.tests == ()


# --- attacks ----------------------------------------------------------------------------------


def test_fork_bomb_is_bounded_and_cleaned_up(isolation):
    require(isolation, "cgroup_pids", "process_limit_rlimit")
    # First a countable bomb: up to 200 sleeping children. pids.max leaves room for the runner
    # and the compiler (RUNNER_PROCESSES) besides the program's num_processes.
    bound = FAST.num_processes + RUNNER_PROCESSES
    counted = (
        "import os, time\nforked = 0\nfor _ in range(200):\n    try:\n        if os.fork() == 0:\n"
        "            time.sleep(5)\n            os._exit(0)\n        forked += 1\n    except OSError:\n        break\n"
        f"print('bounded' if forked < {bound} else forked)\n"
    )
    assert run(isolation, counted, [TestCase("", "bounded")]).verdict is Verdict.OK
    name = marker()
    source = SET_NAME.format(name=name) + (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    result = run(isolation, source, [TestCase("", "")])
    assert result.verdict is Verdict.TIMEOUT
    assert_no_survivor(name)


def test_memory_bomb(isolation):
    result = run(isolation, "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n", [TestCase("", "")])
    assert result.verdict is Verdict.MEMORY


def test_forked_memory_bomb_is_bounded_by_the_cgroup(isolation):
    require(isolation, "cgroup_memory")
    # Six children touch 200 MiB each: each is under RLIMIT_AS (256 MiB), all together are not
    # under the sample's cgroup budget (2 * 256 + 16 + 0.25 + 64 MiB), so the OOM killer must act.
    source = (
        "import os\npids = []\nfor _ in range(6):\n    pid = os.fork()\n    if pid == 0:\n"
        "        block = bytearray(200 << 20)\n        for i in range(0, len(block), 4096):\n            block[i] = 1\n"
        "        import time; time.sleep(1); os._exit(0)\n    pids.append(pid)\n"
        "print(sum(os.waitpid(pid, 0)[1] == 0 for pid in pids))\n"
    )
    limits = FAST.model_copy(update={"wall_seconds": 5.0})
    result = run(isolation, source, [TestCase("", "6")], limits=limits)
    # Unbounded, all six finish in about 1.5 s and print 6 (ok). Bounded, the OOM killer takes some
    # (wrong answer), or the kernel first reclaims the group's pages until the deadline (timeout,
    # seen on a CI machine): either way the group never held more than its budget.
    assert result.verdict in (Verdict.WRONG_ANSWER, Verdict.MEMORY, Verdict.TIMEOUT), result
    if result.peak_memory_bytes is not None:
        assert 0 < result.peak_memory_bytes <= memory_budget(limits), result


def test_infinite_loop_dies_at_the_cpu_limit(isolation):
    result = run(isolation, "while True:\n    pass\n", [TestCase("", "")],
                 limits=FAST.model_copy(update={"wall_seconds": 8.0}))
    assert result.verdict is Verdict.TIMEOUT
    assert result.tests[0].cpu_seconds >= 0.9 and result.tests[0].wall_seconds < 8  # SIGXCPU, not the wall deadline


def test_loop_ignoring_sigxcpu_dies_at_the_hard_cpu_limit(isolation):
    source = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"
    result = run(isolation, source, [TestCase("", "")], limits=FAST.model_copy(update={"wall_seconds": 8.0}))
    assert result.verdict is Verdict.TIMEOUT
    # past the soft limit (1 s, SIGXCPU ignored), killed by the hard one (2 s) long before the wall deadline; the
    # reported CPU time (rusage) lags the kernel's precise count under load, so the bound sits between the two
    assert result.tests[0].cpu_seconds >= 1.5 and result.tests[0].wall_seconds < 8


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_cut(isolation, stream):
    result = run(isolation, f"import sys\nwhile True:\n    sys.{stream}.write('x' * 65536)\n", [TestCase("", "")])
    assert result.verdict is Verdict.OUTPUT_LIMIT and result.tests[0].wall_seconds < FAST.wall_seconds


@pytest.mark.parametrize("target", ["/etc", "/root", "host_tmp", "/var/tmp"])
def test_cannot_write_outside_the_work_dir(isolation, target, tmp_path):
    require(isolation, *(["filesystem"] if target == "/var/tmp" else ["filesystem", "separate_uid"]))
    path = (tmp_path if target == "host_tmp" else Path(target)) / f"mirrorl-escape-{secrets.token_hex(4)}"
    source = (
        f"try:\n    open({str(path)!r}, 'w').write('x')\n    print('wrote')\n"
        "except OSError:\n    print('denied')\n"
    )
    try:
        assert run(isolation, source, [TestCase("", "denied")]).verdict is Verdict.OK
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)


def test_cannot_fill_the_host_disk_or_memory_with_files(isolation):
    require(isolation, "filesystem")  # the tmpfs work dir has a size (16 MiB here)
    source = (
        "try:\n    for i in range(1000):\n        open(f'f{i}', 'wb').write(bytes(1 << 19))\n"
        "except OSError:\n    print('full')\n"
    )
    assert run(isolation, source, [TestCase("", "full")]).verdict is Verdict.OK


def test_cannot_write_a_file_larger_than_file_bytes(isolation):
    result = run(isolation, "open('big', 'wb').write(bytes(2 << 20))\n", [TestCase("", "")])
    assert result.verdict is Verdict.RUNTIME_ERROR and "File too large" in result.detail  # Python ignores SIGXFSZ


def test_cannot_read_host_secrets(isolation, tmp_path):
    require(isolation, "filesystem", "separate_uid")
    secret = tmp_path / "secret.txt"
    secret.write_text(token := secrets.token_hex(8))
    secret.chmod(0o600)
    source = (
        "def attempt(read):\n    try:\n        return str(read())\n    except OSError:\n        return 'denied'\n"
        f"print(attempt(lambda: open({str(secret)!r}).read()), attempt(lambda: __import__('os').listdir('/root')))\n"
    )
    result = run(isolation, source, [TestCase("", "denied denied")])
    assert result.verdict is Verdict.OK, result.detail
    assert token not in result.detail


def test_cannot_connect_to_a_host_listener(isolation):
    require(isolation, "network")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        source = (
            f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    print('connected')\nexcept OSError:\n    print('blocked')\n"
        )
        assert run(isolation, source, [TestCase("", "blocked")]).verdict is Verdict.OK
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()


def test_cannot_kill_its_parent(isolation):
    require(isolation, "pid_namespace", "separate_uid")
    source = (
        "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\n"
        "except OSError:\n    pass\nprint('done')\n"
    )
    result = run(isolation, source, [TestCase("", "done"), TestCase("", "done")])
    assert result.verdict is Verdict.OK and len(result.tests) == 2  # the runner lived on to run test 2


def test_kill_minus_one_reaches_only_the_sandbox(isolation):
    require(isolation, "pid_namespace")  # without one, kill(-1) would hit host processes of the uid
    sleeper = subprocess.Popen(["sleep", "30"], user=65534) if os.geteuid() == 0 else subprocess.Popen(["sleep", "30"])
    try:
        source = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\nprint('done')\n"
        result = run(isolation, source, [TestCase("", "done"), TestCase("", "done")])
        assert result.verdict is Verdict.OK and len(result.tests) == 2
        assert sleeper.poll() is None, "a host process of the sandbox's uid was killed"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_double_forked_daemon_does_not_survive(isolation):
    name = marker()
    source = (  # test 1 leaves a daemon holding stdout; test 2 looks for it from inside
        "import os, time\nif input() == 'spawn':\n    read_end, write_end = os.pipe()\n    if os.fork() == 0:\n"
        "        os.setsid()\n        if os.fork() == 0:\n"
        + "\n".join("            " + line for line in SET_NAME.format(name=name).splitlines())
        + "\n            os.write(write_end, b'up')\n            time.sleep(30)\n        os._exit(0)\n"
        "    os.read(read_end, 2)\n    print('parent done')\nelse:\n    alive = []\n"
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n        try:\n"
        f"            if open(f'/proc/{{pid}}/comm').read().strip() == '{name}'"
        f" and ') Z' not in open(f'/proc/{{pid}}/stat').read():\n"
        "                alive.append(pid)\n        except OSError:\n            pass\n"
        "    print('alive' if alive else 'clean')\n"
    )
    result = run(isolation, source, [TestCase("spawn", "parent done"), TestCase("check", "clean")])
    assert result.verdict is Verdict.OK, result
    assert result.tests[0].wall_seconds < FAST.wall_seconds  # ended when the parent exited, despite the daemon
    assert_no_survivor(name)


def test_exiting_zero_early_is_a_wrong_answer(isolation):
    assert run(isolation, "import os\nos._exit(0)\n").verdict is Verdict.WRONG_ANSWER


def test_cannot_forge_the_runner_report(isolation):
    # Try to write a fake "passed" line into the runner's own stdout through /proc. Two defences:
    # as root the host's pipes belong to root, which the program is not; and the runner is
    # non-dumpable, so a program of its own uid may not open its /proc/<pid>/fd either.
    source = (
        "import base64, json, os\nline = {'kind': 'test', 'status': 'exited', 'code': 0, 'stderr': '',\n"
        "        'stdout': base64.b64encode(b'3').decode(), 'wall_seconds': 0, 'cpu_seconds': 0}\n"
        "for fd in range(3):\n    try:\n        with open(f'/proc/{os.getppid()}/fd/{fd}', 'w') as report:\n"
        "            report.write(json.dumps(line) + '\\n')\n    except OSError:\n        pass\n"
    )
    assert run(isolation, source, ADD[:1]).verdict is Verdict.WRONG_ANSWER


def test_host_deadline_kills_the_whole_sandbox(isolation):
    name = marker()
    source = SET_NAME.format(name=name) + "import os, time\nos.fork()\ntime.sleep(30)\n"
    slow = FAST.model_copy(update={"wall_seconds": 20.0, "cpu_seconds": 20})
    result = run(isolation, source, [TestCase("", "")], limits=slow, host_deadline_seconds=1.0)
    assert result.verdict is Verdict.SANDBOX_ERROR and "deadline" in result.detail
    time.sleep(0.2)  # SIGKILL delivery to the namespace
    assert_no_survivor(name)


# --- reward, CLI, report ----------------------------------------------------------------------


def problem(**meta) -> Problem:
    tests = [{"input": t.input, "output": t.output} for t in ADD]
    return Problem(id="add", prompt="add two numbers", answer="", task="code", meta={"tests": tests, **meta})


def test_code_reward_scores_the_last_program(isolation):
    wrong_then_right = f"First try:\n```python\nprint(0)\n```\nFixed:\n```python\n{ADD_PY}```\n"
    assert code_reward(wrong_then_right, problem(), isolation) == 1.0
    assert code_reward(f"```python\n{ADD_PY}```\nor maybe\n```python\nprint(0)\n```", problem(), isolation) == 0.0
    assert code_reward("the answer is 3", problem(), isolation) == 0.0  # no program is the response's failure
    with pytest.raises(ValueError, match="meta\\['tests'\\]"):
        code_reward(f"```python\n{ADD_PY}```", Problem(id="x", prompt="", answer=""), isolation)


def test_code_reward_never_scores_a_sandbox_error(monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        return sandbox.RunResult(Verdict.SANDBOX_ERROR, (), "simulated")

    monkeypatch.setattr(reward, "run_program", failing)
    assert code_reward(f"```python\n{ADD_PY}```", problem()) is None
    assert len(calls) == 2  # retried once
    results = iter([sandbox.RunResult(Verdict.SANDBOX_ERROR, ()), sandbox.RunResult(Verdict.OK, ())])
    monkeypatch.setattr(reward, "run_program", lambda *args, **kwargs: next(results))
    assert code_reward(f"```python\n{ADD_PY}```", problem()) == 1.0


def test_run_cli(isolation, tmp_path):
    program, tests = tmp_path / "add.py", tmp_path / "tests.jsonl"
    program.write_text(ADD_PY)
    tests.write_text("\n".join(f'{{"input": "{t.input.strip()}", "output": "{t.output.strip()}"}}' for t in ADD))
    backend = isolation.protections.backend
    report = run_cli(program, tests, limits=FAST, backend=backend)
    assert report["verdict"] == "ok" and len(report["tests"]) == 3
    assert report["protections"]["backend"] == backend
    with pytest.raises(ValueError, match="language"):
        run_cli(tests, tests)


def test_backend_none_reports_what_it_lacks():
    report = sandbox.detect_isolation("none").protections
    assert {"filesystem", "network", "pid_namespace", "ipc_namespace"} <= set(report.missing())
    assert any("no namespaces" in note for note in report.notes)


def test_doctests():
    for module in (compare, reward):
        assert doctest.testmod(module).failed == 0


def test_cli_sandbox_run_prints_the_verdict_and_rejects_bad_limits(tmp_path):
    import json

    from typer.testing import CliRunner

    from mirrorl.cli import app

    _bubblewrap_or_skip()  # the command's default backend
    (tmp_path / "add.py").write_text("a, b = map(int, input().split())\nprint(a + b)\n")
    (tmp_path / "tests.jsonl").write_text('{"input": "1 2", "output": "3"}\n{"input": "2 2", "output": "5"}\n')
    result = CliRunner().invoke(app, ["sandbox", "run", str(tmp_path / "add.py"), str(tmp_path / "tests.jsonl")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["verdict"] == "wrong_answer"
    bad = CliRunner().invoke(app, ["sandbox", "run", str(tmp_path / "add.py"), str(tmp_path / "tests.jsonl"),
                                   "--memory-mb", "1"])
    assert bad.exit_code == 2 and "memory_bytes" in bad.output
