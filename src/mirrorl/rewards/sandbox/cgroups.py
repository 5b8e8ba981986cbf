"""Per-sample cgroups: one pids.max and one memory limit over the whole process tree of a sample.

RLIMIT_AS bounds each process; only a cgroup bounds their sum (a fork-and-allocate bomb) and
counts the tmpfs work dir's pages. cgroup v2 is preferred where it is writable. We use:
- v2 when /sys/fs/cgroup is a unified hierarchy whose controllers include pids and memory and we
  can enable them below our own cgroup (in a child `mirrorl-sandbox/`; this fails when our
  cgroup holds processes and is not a root, the v2 no-internal-process rule);
- else the v1 `pids` and `memory` hierarchies, below our own cgroup in each. Our Debian machines
  are hybrid: the v2 part has no controllers, v1 has both and root may write it.
Each sample gets a fresh group, joined by the sandbox's first process before it execs anything
untrusted (see isolation.py), and removed after the run. Without a writable hierarchy there is
no cgroup limit and `protections()` says so. Not done: CPU shares, io limits, the v2 freezer.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CGROUP_MOUNT = Path("/sys/fs/cgroup")
GROUP_PARENT = "mirrorl-sandbox"


@dataclass(frozen=True)
class CgroupRoot:
    """Where per-sample groups are created: the parent directory for each controller."""

    version: int
    parents: dict[str, Path]  # "pids" / "memory" -> directory (v2: the same one for both)

    def create(self, pids_max: int, memory_bytes: int) -> SampleCgroup:
        """A fresh group with these limits in every hierarchy."""
        name = uuid.uuid4().hex
        dirs: dict[str, Path] = {}
        try:
            for controller, parent in self.parents.items():
                if parent not in dirs.values():
                    (parent / name).mkdir()
                dirs[controller] = parent / name
            group = SampleCgroup(self.version, dirs)
            group.set_limits(pids_max, memory_bytes)
        except OSError:
            SampleCgroup(self.version, dirs).remove()
            raise
        return group


@dataclass(frozen=True)
class SampleCgroup:
    """The cgroup of one sample: its directory per controller."""

    version: int
    dirs: dict[str, Path]

    def set_limits(self, pids_max: int, memory_bytes: int) -> None:
        if "pids" in self.dirs:
            (self.dirs["pids"] / "pids.max").write_text(str(pids_max))
        if "memory" in self.dirs:
            memory = self.dirs["memory"]
            if self.version == 2:
                (memory / "memory.max").write_text(str(memory_bytes))
                _write_if_present(memory / "memory.swap.max", "0")
            else:  # the swap limit (memsw) must not be below the memory limit, so it goes second
                (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
                _write_if_present(memory / "memory.memsw.limit_in_bytes", str(memory_bytes))

    def procs_files(self) -> list[Path]:
        """The files a process writes its pid to, to join this group in every hierarchy."""
        return [path / "cgroup.procs" for path in sorted(set(self.dirs.values()))]

    def oom_kills(self) -> int:
        """How many processes the OOM killer took in this group (v1 kernels >= 4.13)."""
        if "memory" not in self.dirs:
            return 0
        events = self.dirs["memory"] / ("memory.events" if self.version == 2 else "memory.oom_control")
        try:
            counters = dict(line.split() for line in events.read_text().splitlines() if line.strip())
        except (OSError, ValueError):
            return 0
        return int(counters.get("oom_kill", 0))

    def peak_memory_bytes(self) -> int | None:
        """The group's highest memory use so far (v1: RAM + swap when memsw exists; v2 kernels
        >= 5.19), or None where the kernel does not keep it."""
        if "memory" not in self.dirs:
            return None
        memory = self.dirs["memory"]
        names = (["memory.peak"] if self.version == 2
                 else ["memory.memsw.max_usage_in_bytes", "memory.max_usage_in_bytes"])
        for name in names:
            try:
                return int((memory / name).read_text())
            except (OSError, ValueError):
                continue
        return None

    def remove(self) -> None:
        """SIGKILL whatever is left in the group, then delete it (logged, not raised, on failure)."""
        for path in sorted(set(self.dirs.values())):
            for _ in range(100):
                try:
                    pids = (path / "cgroup.procs").read_text().split()
                    for pid in pids:
                        _kill(int(pid))
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    if err.errno != errno.EBUSY:
                        logger.warning("cannot remove cgroup %s: %s", path, err)
                        break
                    time.sleep(0.01)  # killed processes still exiting
            else:
                logger.warning("cgroup %s still busy after 1 s; left in place", path)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _write_if_present(path: Path, value: str) -> None:
    if path.exists():
        path.write_text(value)


def _own_cgroups() -> dict[str, str]:
    """Our cgroup path per v1 controller, and under "" the v2 one, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _usable(parents: dict[str, Path], version: int) -> bool:
    """Make and delete one probe group: write access is only known by trying."""
    try:
        CgroupRoot(version, parents).create(pids_max=8, memory_bytes=64 << 20).remove()
    except OSError:
        return False
    return True


def _v2_root(own: dict[str, str]) -> tuple[CgroupRoot | None, str]:
    base = CGROUP_MOUNT / own.get("", "/").lstrip("/")
    wanted = [c for c in ("pids", "memory") if c in (base / "cgroup.controllers").read_text().split()]
    if not wanted:
        return None, f"cgroup v2: no pids or memory controller in {base}"
    parent = base / GROUP_PARENT
    try:
        enabled = (base / "cgroup.subtree_control").read_text().split()
        if missing := [c for c in wanted if c not in enabled]:
            (base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
        parent.mkdir(exist_ok=True)
        (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
    except OSError as err:
        return None, f"cgroup v2: cannot enable {'+'.join(wanted)} below {base} ({err.strerror})"
    parents = {c: parent for c in wanted}
    if not _usable(parents, 2):
        return None, f"cgroup v2: cannot create groups in {parent}"
    return CgroupRoot(2, parents), ""


def _v1_root(own: dict[str, str]) -> tuple[CgroupRoot | None, str]:
    parents: dict[str, Path] = {}
    for controller in ("pids", "memory"):
        hierarchy = CGROUP_MOUNT / controller
        if controller not in own or not (hierarchy / "cgroup.procs").exists():
            continue
        parent = hierarchy / own[controller].lstrip("/") / GROUP_PARENT
        try:
            parent.mkdir(exist_ok=True)
        except OSError:
            continue
        if _usable({controller: parent}, 1):
            parents[controller] = parent
    if not parents:
        return None, "cgroup v1: no writable pids or memory hierarchy"
    return CgroupRoot(1, parents), ""


def find_cgroup_root() -> tuple[CgroupRoot | None, str]:
    """The writable cgroup hierarchy for per-sample groups, or None and why not."""
    if not CGROUP_MOUNT.is_dir():
        return None, f"no cgroup filesystem at {CGROUP_MOUNT}"
    own = _own_cgroups()
    if (CGROUP_MOUNT / "cgroup.controllers").exists():
        return _v2_root(own)
    return _v1_root(own)
