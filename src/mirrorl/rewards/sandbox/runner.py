"""The runner: executes one program against its test inputs, from inside the sandbox.

Started once per sample as `python3 -I -S -c <this file's text>` (bubblewrap's pid 1, or a plain
child with backend "none"). Reads one JSON job on stdin:
    {"language": "python" | "cpp", "source": str, "inputs": [str], "limits": Limits fields,
     "python": path, "cxx": path, "child_uid": int | null, "limit_processes": bool}
and writes JSON lines on stdout: {"kind": "ready", "time": its wall clock}, then {"kind": "compile", ...} for C++, then
one {"kind": "test", ...} per test it ran. A run line holds: status ("exited", "signaled",
"timeout", "output_limit"), code (exit code or signal number), stdout (base64, capped), stderr
(its last STDERR_TAIL_BYTES bytes), wall_seconds, cpu_seconds.

It never sees the expected outputs: the host compares them, so even a program that took the
runner over could not claim more than computing the answers. Its defences:
- Non-dumpable (PR_SET_DUMPABLE 0): a program running with the same uid cannot ptrace it nor
  open /proc/<runner>/fd/1 to write a forged report.
- Child subreaper (PR_SET_CHILD_SUBREAPER; implied when it is pid 1 of bubblewrap's pid
  namespace): the orphans of a program (double-forked daemons) become its children, and after
  every run it kills and reaps all its descendants; as pid 1 it first sends SIGKILL to the whole
  namespace. Pid 1 also ignores `kill -9 -1` and signals from its own children.
- Each child: a new session, oom_score_adj 1000 (the OOM killer takes the program, never the
  runner), parent-death SIGKILL, and rlimits: AS and DATA, CPU (soft, hard = soft + 1 so a
  program that ignores SIGXCPU still dies), FSIZE, NOFILE, NPROC (when the host says the uid's
  process count is private to this sandbox), CORE 0; with backend "none" as root, uid `child_uid`.

Stdlib only, Python >= 3.8: it runs under the sandbox's python3, never imports mirrorl. The host
imports `pump` from here (the same capped, deadline-bound pipe exchange on both sides).
"""

from __future__ import annotations

import binascii
import ctypes
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from collections import namedtuple

STDERR_TAIL_BYTES = 4096
IDLE_SECONDS = 0.05  # after the child exits, how long its pipes may stay silent before we stop
COMPILE_MEMORY_BYTES = 2 << 30  # RLIMIT_AS of the C++ compiler
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36
LIBC = ctypes.CDLL(None, use_errno=True)


# What a process wrote before its pipes closed, the deadline passed or its output overflowed.
# (A namedtuple, not a dataclass: importing dataclasses costs the runner 10 ms per sample.)
Pumped = namedtuple("Pumped", ["stdout", "stderr_tail", "timed_out", "overflowed"])


def pump(process: subprocess.Popen, data: bytes, deadline: float, max_bytes: int) -> Pumped:
    """Write `data` to the process's stdin while reading its stdout and stderr.

    Stops at EOF on both, at `deadline` (time.monotonic), when stdout or stderr passes
    `max_bytes`, or when the process has exited and its pipes stayed silent for IDLE_SECONDS
    (a daemon it left behind may hold them open). Never blocks past the deadline.
    """
    selector = selectors.DefaultSelector()
    if data:
        os.set_blocking(process.stdin.fileno(), False)
        selector.register(process.stdin, selectors.EVENT_WRITE)
    else:
        process.stdin.close()
    selector.register(process.stdout, selectors.EVENT_READ)
    selector.register(process.stderr, selectors.EVENT_READ)
    stdout, stderr, written, stderr_total = bytearray(), bytearray(), 0, 0
    timed_out = overflowed = False
    while selector.get_map() and not overflowed:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        events = selector.select(min(remaining, IDLE_SECONDS))
        if not events and process.poll() is not None:
            break
        for key, _ in events:
            if key.fileobj is process.stdin:
                try:
                    written += os.write(key.fd, data[written : written + 65536])
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    written = len(data)  # the program stopped reading its input
                if written >= len(data):
                    selector.unregister(process.stdin)
                    process.stdin.close()
                continue
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
            elif key.fileobj is process.stdout:
                stdout += chunk
                overflowed = overflowed or len(stdout) > max_bytes
            else:
                stderr_total += len(chunk)
                stderr = (stderr + chunk)[-STDERR_TAIL_BYTES:]
                overflowed = overflowed or stderr_total > max_bytes
    selector.close()
    for stream in (process.stdin, process.stdout, process.stderr):
        stream.close()
    return Pumped(bytes(stdout[:max_bytes]), bytes(stderr), timed_out, overflowed)


def _process_tree() -> dict[int, list[int]]:
    """Children of every process, from the ppid field of /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def kill_descendants() -> None:
    """SIGKILL every descendant of this process and reap them (we are their subreaper).

    Each round kills the whole tree seen in /proc; a process forked between the scan and its
    parent's death is reparented to us and caught by the next round.
    """
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)  # every process of the pid namespace but us
        except ProcessLookupError:
            pass
    while True:
        tree = _process_tree()
        direct = tree.get(os.getpid(), [])
        pending, descendants = list(direct), []
        while pending:
            pid = pending.pop()
            descendants.append(pid)
            pending.extend(tree.get(pid, []))
        if not descendants:
            return
        for pid in descendants:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in direct:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _prctl(option: int, value: int) -> None:
    if LIBC.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def _limit_child(limits: dict, cpu_seconds: int, memory_bytes: int, limit_processes: bool) -> None:
    """Runs in the forked child before exec (the runner is single-threaded, so this is safe)."""
    _prctl(PR_SET_DUMPABLE, 1)  # inherited 0 makes /proc/self root-owned; exec would reset it anyway
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    for kind in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        resource.setrlimit(kind, (memory_bytes, memory_bytes))
    if limit_processes:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["num_processes"], limits["num_processes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["num_open_files"], limits["num_open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with open("/proc/self/oom_score_adj", "w") as adj:
        adj.write("1000")
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_child(argv: list[str], data: bytes, job: dict, *, compiling: bool = False) -> dict:
    """Run one process under the job's limits and return its report line (without "kind").

    The compiler gets `compile_seconds` of CPU and wall time, COMPILE_MEMORY_BYTES and no
    process limit (g++ starts cc1plus, as, collect2 and ld); the program gets the job's limits.
    """
    limits = job["limits"]
    if compiling:
        cpu_seconds, wall_seconds, memory_bytes = (int(limits["compile_seconds"]) + 1, limits["compile_seconds"],
                                                   COMPILE_MEMORY_BYTES)
    else:
        cpu_seconds, wall_seconds, memory_bytes = limits["cpu_seconds"], limits["wall_seconds"], limits["memory_bytes"]
    limit_processes = job["limit_processes"] and not compiling
    uid, work_dir = job["child_uid"], os.getcwd()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    child = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, close_fds=True, user=uid, group=uid, extra_groups=None if uid is None else [],
        env={"PATH": "/usr/bin:/bin", "HOME": work_dir, "TMPDIR": work_dir, "LANG": "C.UTF-8"},
        preexec_fn=lambda: _limit_child(limits, cpu_seconds, memory_bytes, limit_processes),
    )
    pumped = pump(child, data, start + wall_seconds, limits["output_bytes"])
    timed_out = pumped.timed_out
    if timed_out or pumped.overflowed:
        _kill_group(child.pid)
    try:  # the program may close its pipes and go on running
        returncode = child.wait(max(0.0, start + wall_seconds - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(child.pid)
        returncode = child.wait()
    kill_descendants()
    wall = time.monotonic() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if timed_out:
        status = "timeout"
    elif pumped.overflowed:
        status = "output_limit"
    elif returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and cpu >= cpu_seconds):
        status = "timeout"  # RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one
    else:
        status = "signaled" if returncode < 0 else "exited"
    return {
        "status": status, "code": abs(returncode),
        "stdout": binascii.b2a_base64(pumped.stdout, newline=False).decode("ascii"),
        "stderr": pumped.stderr_tail.decode("utf-8", "replace"),
        "wall_seconds": wall, "cpu_seconds": cpu,
    }


def _emit(kind: str, line: dict) -> None:
    sys.stdout.write(json.dumps({"kind": kind, **line}) + "\n")
    sys.stdout.flush()


def main() -> None:
    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    job = json.loads(sys.stdin.buffer.read())
    _emit("ready", {"time": time.time()})
    if job["language"] == "cpp":
        with open("main.cpp", "w", encoding="utf-8") as source:
            source.write(job["source"])
        compiled = run_child([job["cxx"], "-O2", "-std=gnu++17", "-pipe", "-o", "main", "main.cpp"], b"", job,
                             compiling=True)
        _emit("compile", compiled)
        if compiled["status"] != "exited" or compiled["code"] != 0:
            return
        argv = ["./main"]
    else:
        with open("main.py", "w", encoding="utf-8") as source:
            source.write(job["source"])
        argv = [job["python"], "-I", "main.py"]
    for data in job["inputs"]:
        run = run_child(argv, data.encode(), job)
        _emit("test", run)
        if job["limits"]["stop_on_failure"] and (run["status"] != "exited" or run["code"] != 0):
            return


if __name__ == "__main__":
    main()
