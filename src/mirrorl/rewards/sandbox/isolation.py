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

Fallback (no bubblewrap, or it cannot start): the runner runs as a plain child in a fresh temp
dir, with the same rlimits, cgroup and subreaper cleanup; as root, the program runs as uid 65534
(so host files readable only by root stay unreadable, and the runner cannot be signalled).
It has no filesystem, network, pid or ipc isolation; `Protections` names what is missing and
`default_isolation()` logs it once as a warning.
"""

from __future__ import annotations

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

Backend = Literal["auto", "bubblewrap", "none"]
SANDBOX_UID = 65534  # nobody
WORK_DIR = "/work"
RUNNER_SOURCE = Path(runner.__file__).read_text()


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

    bwrap: str | None  # bubblewrap's path; None: the fallback
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
        in_fallback_as_root = self.bwrap is None and os.geteuid() == 0
        return {
            "python": self.python,
            "cxx": self.cxx,
            "child_uid": SANDBOX_UID if in_fallback_as_root else None,
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


def detect_isolation(backend: Backend = "auto") -> Isolation:
    """Probe this machine. backend="bubblewrap" raises when bubblewrap cannot run here."""
    if backend not in ("auto", "bubblewrap", "none"):
        raise ValueError(f"sandbox backend={backend!r}: use 'auto', 'bubblewrap' or 'none'")
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

    bwrap = shutil.which("bwrap") if backend != "none" else None
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
        if not (error := _probe(isolation)):
            return isolation
        notes.append(f"bubblewrap cannot start here: {error}")
    elif backend != "none":
        notes.append("bubblewrap is not installed (scripts/install-bwrap.sh)")
    if backend == "bubblewrap":
        raise RuntimeError(f"sandbox backend 'bubblewrap' requested but unusable: {'; '.join(notes)}")

    # RLIMIT_NPROC counts every process of the uid on the host, a budget shared by concurrent
    # samples, so the fallback uses it only as root (program as SANDBOX_UID) and without pids.max.
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


_default: Isolation | None = None
_default_lock = threading.Lock()


def default_isolation() -> Isolation:
    """The best isolation of this machine, detected once; logs which protections are missing."""
    global _default
    with _default_lock:
        if _default is None:
            _default = detect_isolation("auto")
            report = _default.protections
            log = logger.warning if report.missing() else logger.info
            log("code sandbox: %s", report.summary())
        return _default


def protections() -> Protections:
    """Which protections the default sandbox of this machine has (the sandbox's start-up report)."""
    return default_isolation().protections
