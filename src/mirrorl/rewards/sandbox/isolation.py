"""Which isolation this machine offers, the report of it, and the command that starts a sandbox.

Bubblewrap when it is installed and can create namespaces here (probed once by starting it):
`--unshare-all` plus an explicit user namespace (user, pid, net, ipc, uts, cgroup), nested user
namespaces disabled, a root built from read-only binds of /usr (and the /bin, /lib... links or
dirs) plus /etc/ld.so.cache only, a fresh /proc and minimal /dev (read-only), a private tmpfs
work dir of bounded size (/work, /tmp links to it), the rest of the root remounted read-only,
cleared environment, --die-with-parent, --new-session, and the runner as the namespace's pid 1
(--as-pid-1): when it exits, the kernel kills every process of the namespace.

Uid: started as root, the sandbox first drops to uid/gid 65534 (setpriv) and bubblewrap then
makes an unprivileged user namespace. We chose this because root ignores RLIMIT_NPROC (and
bubblewrap run as root maps the sandbox to host uid 0); as an unprivileged user namespace, the
process count is counted per namespace (Linux >= 5.14 ucounts), so RLIMIT_NPROC bounds one
sample's processes without sharing a budget with concurrent samples. Measured on our machines.

Cgroups (cgroups.py): a root-run `sh` writes its pid into the sample's cgroup.procs files, then
execs setpriv/bubblewrap, so nothing untrusted ever runs outside the group.

No fallback: where bubblewrap is missing or cannot start, backend "bubblewrap" raises
`SandboxUnavailable`, a one-line ValueError naming the fix, and no program runs. We chose to fail
closed because the only alternative, a plain child process, lets a program write host files and
reach host network services: training on a machine without bubblewrap should stop at start, not
run model-written code unprotected. ("auto" is kept as the CLI's default spelling of "bubblewrap";
it once meant "bubblewrap, else the plain child" and no longer does.)

Backend "none", only when chosen explicitly: the runner runs as a plain child in a fresh temp dir,
with the same rlimits, cgroup and subreaper cleanup; as root, the program runs as uid 65534 (so
host files readable only by root stay unreadable, and the runner cannot be signalled). It has no
filesystem, network, pid or ipc isolation; `Protections` names what is missing and choosing it
logs a warning once per process.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from mirrorl.rewards.sandbox import runner
from mirrorl.rewards.sandbox.cgroups import CgroupRoot, SampleCgroup, find_cgroup_root

logger = logging.getLogger(__name__)

Backend = Literal["bubblewrap", "none", "auto"]  # "auto": the CLI's default, the same as "bubblewrap"
SANDBOX_UID = 65534  # nobody
WORK_DIR = "/work"
RUNNER_SOURCE = Path(runner.__file__).read_text()
INSTALL_HINT = "install it with `sh scripts/install-bwrap.sh` (Debian/Ubuntu: `apt-get install bubblewrap`)"
UNPROTECTED_HINT = ("to run programs unprotected on purpose, choose the sandbox backend 'none' "
                    "(rl.reward=code_unprotected; `mirrorl sandbox run` or `mirrorl gen-tests` --backend none)")


class SandboxUnavailable(ValueError):
    """Bubblewrap is missing or cannot start here and backend "none" was not chosen: no program runs.

    A ValueError (the CLI prints it as one line, exit code 2) because the fix is the user's: install
    bubblewrap, allow user namespaces, or choose backend "none" on purpose.
    """


@dataclass(frozen=True)
class Protections:
    """Which defences a sandbox has. `notes` say why a missing one is missing."""

    backend: str  # "bubblewrap" or "none"
    filesystem: bool  # private read-only root: host files outside /usr are invisible, writes stay in the tmpfs
    network: bool  # own network namespace: no route to the host's listeners or the internet
    pid_namespace: bool  # the program sees and signals only its own processes; all die with the runner
    ipc_namespace: bool  # no shared memory or message queues with the host
    separate_uid: bool  # the program runs as host uid 65534, not as the user who started mirrorl
    process_limit_rlimit: bool  # RLIMIT_NPROC applies (not root) and counts this sample's processes only
    cgroup_pids: bool  # pids.max over the sample's process tree
    cgroup_memory: bool  # one memory limit over the sample's process tree and its tmpfs
    rlimits: bool = True  # CPU, AS/DATA, FSIZE, NOFILE, CORE: always
    cgroup_version: int | None = None
    notes: tuple[str, ...] = ()

    def active(self) -> list[str]:
        """Names of the protections that are active."""
        return [name for name, value in asdict(self).items() if value is True]

    def missing(self) -> list[str]:
        """Names of the protections that are not active."""
        return [name for name, value in asdict(self).items() if value is False]

    def summary(self) -> str:
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return (f"{self.backend}; active: {', '.join(self.active())}; "
                f"missing: {', '.join(self.missing()) or 'none'}{notes}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Isolation:
    """How sandboxes are started on this machine (built once by `detect_isolation`)."""

    bwrap: str | None  # bubblewrap's path; None: backend "none"
    setpriv: str | None  # when running as root: drops to SANDBOX_UID before bubblewrap
    cgroup_root: CgroupRoot | None
    python: str  # the interpreter of the runner and of Python programs
    cxx: str | None  # g++, or None: C++ programs are a sandbox error
    protections: Protections
    extra_binds: tuple[str, ...] = field(default=())  # read-only binds besides /usr (a Python outside it)

    def command(self, cgroup: SampleCgroup | None, work_dir_bytes: int) -> list[str]:
        """The argv that starts the runner in a sandbox (it then reads its job on stdin)."""
        argv = [self.python, "-I", "-S", "-c", RUNNER_SOURCE]  # -S: the runner needs no site-packages
        if self.bwrap is not None:
            argv = [self.bwrap, *self._bwrap_args(work_dir_bytes), "--", *argv]
            if self.setpriv is not None:
                argv = [self.setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups", "--", *argv]
        if cgroup is not None:
            files = cgroup.procs_files()
            joins = " && ".join(f'echo $$ > "${i}"' for i in range(1, len(files) + 1))
            argv = ["/bin/sh", "-c", f'{joins} && shift {len(files)} && exec "$@"', "sh", *map(str, files), *argv]
        return argv

    def job_fields(self) -> dict:
        """What the runner needs to know about this isolation."""
        unprotected_as_root = self.bwrap is None and os.geteuid() == 0
        return {
            "python": self.python,
            "cxx": self.cxx,
            "child_uid": SANDBOX_UID if unprotected_as_root else None,
            "limit_processes": self.protections.process_limit_rlimit,
        }

    def _bwrap_args(self, work_dir_bytes: int) -> list[str]:
        args = ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                "--as-pid-1", "--clearenv", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
                "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            path = Path("/") / name
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                args += ["--ro-bind", str(path), str(path)]
        for path in self.extra_binds:
            args += ["--ro-bind", path, path]
        return args + [
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache", "--proc", "/proc", "--dev", "/dev",
            "--size", str(work_dir_bytes), "--tmpfs", WORK_DIR, "--symlink", WORK_DIR, "/tmp", "--chdir", WORK_DIR,
            "--remount-ro", "/dev", "--remount-ro", "/",
        ]  # fmt: skip


def _python() -> str:
    """The system python3 if there is one (inside the /usr bind), else the one running mirrorl.

    The latter's installation prefix is then bound read-only; if it lies below a directory that
    uid 65534 cannot enter (/root), the sandbox cannot start and the probe says so.
    """
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    return os.path.realpath(sys.executable)


def _probe(isolation: Isolation) -> str:
    """Start bubblewrap once with the real arguments and Python; '' if it works, else its error."""
    argv = isolation.command(None, 1 << 20)[:-1] + ["pass"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, env={})
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return ("" if done.returncode == 0
            else done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}")


def _unavailable(bwrap: str | None, error: str) -> SandboxUnavailable:
    """The one-line refusal: what is wrong, why it matters, how to fix it."""
    if bwrap is None:
        what = f"bubblewrap (bwrap) is not installed; {INSTALL_HINT}"
    else:
        error = " / ".join(line.strip() for line in error.splitlines() if line.strip())[:300]
        what = (f"bubblewrap ({bwrap}) is installed but cannot start here ({error}); it needs bubblewrap >= 0.8 "
                f"({INSTALL_HINT}) and unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
                "user.max_user_namespaces > 0; in a container, a seccomp profile that allows them)")
    return SandboxUnavailable(f"the code sandbox refuses to run programs: {what}. Without it a program could write "
                              f"host files and reach host network services; {UNPROTECTED_HINT}")


def detect_isolation(backend: Backend = "bubblewrap") -> Isolation:
    """Probe this machine for `backend` (uncached: see `isolation_for`).

    "bubblewrap" (or "auto") raises SandboxUnavailable where bubblewrap is missing or cannot start;
    "none" gives the unprotected plain child and logs a warning once per process.
    """
    if backend not in ("auto", "bubblewrap", "none"):
        raise ValueError(f"sandbox backend={backend!r}: use 'bubblewrap' or 'none' ('auto' means 'bubblewrap')")
    bwrap = shutil.which("bwrap") if backend != "none" else None
    if backend != "none" and bwrap is None:  # before the cgroup probe: a refusal should be cheap
        raise _unavailable(None, "")
    is_root = os.geteuid() == 0
    python = _python()
    extra_binds = () if python.startswith("/usr/") else (os.path.realpath(sys.base_prefix),)
    cgroup_root, cgroup_note = find_cgroup_root() if is_root else (None, "cgroups: not root, none used")
    controllers = cgroup_root.parents if cgroup_root else {}
    cxx = shutil.which("g++")
    notes = [note for note in (cgroup_note, "" if cxx else "no g++: C++ programs are a sandbox error") if note]
    common = {"cgroup_root": cgroup_root, "python": python, "cxx": cxx, "extra_binds": extra_binds}
    cgroups = {"cgroup_pids": "pids" in controllers, "cgroup_memory": "memory" in controllers,
               "cgroup_version": cgroup_root.version if cgroup_root else None}  # fmt: skip

    if bwrap is not None:
        setpriv = shutil.which("setpriv") if is_root else None
        unprivileged = not is_root or setpriv is not None  # root in the sandbox ignores RLIMIT_NPROC
        isolation = Isolation(
            bwrap, setpriv, protections=Protections(
                "bubblewrap", filesystem=True, network=True, pid_namespace=True, ipc_namespace=True,
                separate_uid=is_root and unprivileged, process_limit_rlimit=unprivileged, **cgroups,
                notes=tuple(notes + ([] if unprivileged else ["no setpriv: the sandbox runs as host root"]))),
            **common,
        )  # fmt: skip
        if error := _probe(isolation):
            raise _unavailable(bwrap, error)
        return isolation

    # RLIMIT_NPROC counts every process of the uid on the host, a budget shared by concurrent
    # samples, so backend "none" uses it only as root (program as SANDBOX_UID) and without pids.max.
    _warn_unprotected()
    notes.append("no namespaces: the program shares the host's filesystem, network, process table and ipc")
    if not is_root:
        notes.append("not root: the program runs as your uid and may signal your processes")
    return Isolation(
        None, None, protections=Protections(
            "none", filesystem=False, network=False, pid_namespace=False, ipc_namespace=False,
            separate_uid=is_root, process_limit_rlimit=is_root and not cgroups["cgroup_pids"], **cgroups,
            notes=tuple(notes)),
        **common,
    )  # fmt: skip


@functools.cache
def _warn_unprotected() -> None:
    """Once per process (functools.cache): backend "none" was chosen."""
    logger.warning("code sandbox: backend 'none' chosen: programs run unprotected, as plain child processes "
                   "that can write host files and reach host network services (only rlimits and, as root, "
                   "cgroups where writable still apply)")


_cache: dict[str, Isolation | SandboxUnavailable] = {}  # backend -> this process's isolation, or its refusal
_cache_lock = threading.Lock()


def isolation_for(backend: Backend = "bubblewrap") -> Isolation:
    """This machine's isolation for `backend`, probed once per process; a refusal is remembered too.

    Per process, not per run: a reward shipped to another machine probes that machine on its first
    use. Raises SandboxUnavailable (every time) where bubblewrap cannot run and "none" was not chosen.
    """
    key = "bubblewrap" if backend == "auto" else backend
    with _cache_lock:
        if key not in _cache:
            try:
                isolation = detect_isolation(key)
            except SandboxUnavailable as err:
                _cache[key] = err
            else:
                _cache[key] = isolation
                if key == "bubblewrap":  # "none" has warned in detect_isolation
                    log = logger.warning if isolation.protections.missing() else logger.info
                    log("code sandbox: %s", isolation.protections.summary())
        found = _cache[key]
    if isinstance(found, SandboxUnavailable):
        raise SandboxUnavailable(str(found))  # a fresh one: re-raising the cached object would grow its traceback
    return found


def default_isolation() -> Isolation:
    """Bubblewrap on this machine, probed once; raises SandboxUnavailable without it (no fallback)."""
    return isolation_for("bubblewrap")


def protections() -> Protections:
    """Which protections the default sandbox of this machine has (the sandbox's start-up report)."""
    return default_isolation().protections
