"""Crash-safe checkpoints: a directory per step that appears whole or not at all.

`CheckpointStore.save(step, write)` lets `write(dir)` fill a temporary directory
(`.tmp-<step>-<pid>`), fsyncs every file, writes `manifest.json` last (step, size and sha256 of
every file, the resolved config, the mirrorl version, a format version, a UTC timestamp), renames
the directory to `step-000123`, fsyncs the parent and only then moves the `latest` pointer (a text
file holding the directory name, replaced with `os.replace`). A crash or a full disk at any point
leaves the previous checkpoint and `latest` as they were. After a save the store keeps the newest
`keep_last` checkpoints by step, every `keep_every`-th step, and always the one `latest` names.

Reading (`find_latest`, `CheckpointStore.latest`) trusts `latest` only if its target verifies
against its manifest; otherwise it scans `step-*` directories from the highest step down and
skips, with a logged warning, any that fail to verify. Reading never deletes anything; the store
(the single writer of a directory) removes leftover temporary directories when it is created.

The store does not look inside the payload: what a training loop writes into a checkpoint (trainer
state, optimizer, RNG) is `mirrorl.train.state`.

Not covered: several processes writing into one directory (one writer per directory; readers may
run alongside), sharded/distributed state (each rank would need its own files), remote storage.
Verifying reads every byte of the checkpoint, so `latest()` costs about one read of the model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mirrorl

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest"
TMP_PREFIX = ".tmp-"  # unfinished writes: always safe to delete
REPLACED_PREFIX = ".replaced-"  # a whole checkpoint moved aside while the same step is re-saved
STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint could not be saved; the message says which step, where and why."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint directory and its manifest."""

    path: Path
    step: int
    manifest: dict[str, Any]


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


# ---------------------------------------------------------------------------------------------
# Durable file-system primitives


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory (on Linux a read-only descriptor is enough for both)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _hash_file(path: Path, sync: bool = False) -> dict[str, Any]:
    """Size and sha256 of a file; with `sync`, also fsync it through the same descriptor."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(f.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def _seal(directory: Path) -> dict[str, dict[str, Any]]:
    """fsync every file and subdirectory below `directory`; return {relative path: size, sha256}."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            files[path.relative_to(directory).as_posix()] = _hash_file(path, sync=True)
        elif path.is_dir():
            _fsync_path(path)
    return files


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _package_version() -> str:
    version = getattr(mirrorl, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("mirrorl")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    first_line = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__


# ---------------------------------------------------------------------------------------------
# Reading and verifying


def verify(path: Path, checksums: bool = True) -> Checkpoint:
    """Check a checkpoint directory against its manifest; ValueError says what is wrong.

    Every file listed must exist with the recorded size and (if `checksums`) sha256. Files not
    listed are ignored.
    """
    match = STEP_DIR.fullmatch(path.name)
    if match is None:
        raise ValueError(f"{path}: not a checkpoint directory name (expected step-NNNNNN)")
    if not path.is_dir():
        raise ValueError(f"{path}: no such directory")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable {MANIFEST_FILE} ({_describe(err)})") from err
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise ValueError(f"{path}: {MANIFEST_FILE} has no valid 'files' table")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r} is not one this code reads (<= {FORMAT_VERSION})")
    if manifest.get("step") != int(match.group(1)):
        raise ValueError(f"{path}: manifest step {manifest.get('step')!r} does not match the directory name")
    for name, expected in files.items():
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{path}: manifest lists a path outside the checkpoint: {name!r}")
        file = path / rel
        if not file.is_file():
            raise ValueError(f"{path}: missing file {name}")
        if file.stat().st_size != expected.get("size"):
            raise ValueError(f"{path}: {name} has {file.stat().st_size} bytes, manifest says {expected.get('size')}")
        if checksums and _hash_file(file)["sha256"] != expected.get("sha256"):
            raise ValueError(f"{path}: {name} does not match its sha256 checksum")
    return Checkpoint(path=path, step=manifest["step"], manifest=manifest)


def _read_pointer(root: Path) -> str | None:
    try:
        name = (root / LATEST_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if STEP_DIR.fullmatch(name) else None


def _step_dirs(root: Path) -> list[Path]:
    """`step-*` directories of `root`, highest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(STEP_DIR.fullmatch(p.name).group(1)), reverse=True)


def find_latest(root: Path, checksums: bool = True) -> Checkpoint | None:
    """The checkpoint `latest` names if it verifies, else the highest-step one that does; None if none.

    Read-only: safe to call while another process saves into `root`.
    """
    root = Path(root)
    name = _read_pointer(root)
    if name is not None:
        try:
            return verify(root / name, checksums)
        except ValueError as err:
            log.warning("checkpoint 'latest' is not usable, scanning %s instead: %s", root, err)
    elif (root / LATEST_FILE).exists():
        log.warning("%s does not name a checkpoint directory; scanning %s", root / LATEST_FILE, root)
    for path in _step_dirs(root):
        if path.name == name:
            continue  # already tried and warned about
        try:
            return verify(path, checksums)
        except ValueError as err:
            log.warning("skipping invalid checkpoint: %s", err)
    return None


# ---------------------------------------------------------------------------------------------
# Writing


class CheckpointStore:
    """The one writer of a checkpoint directory (`run_dir / "checkpoints"`).

    Creating a store removes leftovers of interrupted saves, so do not create one in a process
    that only reads (use `find_latest`).
    """

    def __init__(self, root: Path, keep_last: int = 3, keep_every: int = 0) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last}: must keep at least the newest checkpoint (>= 1)")
        if keep_every < 0:
            raise ValueError(f"keep_every={keep_every}: must be >= 0 (0 keeps no permanent checkpoints)")
        self.root = Path(root)
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.root.mkdir(parents=True, exist_ok=True)
        _fsync_path(self.root.parent)
        self._clean_leftovers()

    def latest(self, checksums: bool = True) -> Checkpoint | None:
        """See `find_latest`."""
        return find_latest(self.root, checksums)

    def save(self, step: int, write: Callable[[Path], None],
             config: str | Mapping[str, Any] | None = None) -> Path:
        """Write checkpoint `step` atomically and return its directory.

        `write(dir)` puts the payload files in `dir` (any layout; no need to fsync). `config` is
        stored in the manifest (YAML text or a JSON-able dict, e.g. `cfg.model_dump(mode="json")`).
        Raises CheckpointError if anything fails; the previous checkpoint and `latest` are kept.
        """
        if step < 0:
            raise ValueError(f"checkpoint step must be >= 0, got {step}")
        name = step_dir_name(step)
        tmp = self.root / f"{TMP_PREFIX}{step}-{os.getpid()}"
        kept = _read_pointer(self.root) or "none"
        done = False
        try:
            if tmp.exists():
                _remove(tmp)
            tmp.mkdir()
            write(tmp)
            manifest = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "mirrorl_version": _package_version(),
                "config": config,
                "files": _seal(tmp),
            }
            _write_durably(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1, default=str))  # last
            _fsync_path(tmp)
            self._move_into_place(tmp, name)
            done = True
        except Exception as err:
            raise CheckpointError(f"checkpoint step {step} was not saved in {self.root} ({_describe(err)}); "
                                  f"the previous checkpoint ({kept}) and 'latest' are untouched") from err
        finally:
            if not done:
                shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._point_latest(name)
        except OSError as err:
            raise CheckpointError(f"checkpoint {self.root / name} was saved but 'latest' could not be updated "
                                  f"({_describe(err)}); it still names {kept}") from err
        self._prune()
        return self.root / name

    def _move_into_place(self, tmp: Path, name: str) -> None:
        """rename(tmp, name); a checkpoint already at `name` is moved aside first and dropped after."""
        final = self.root / name
        aside = self.root / f"{REPLACED_PREFIX}{name}"
        if final.exists():
            if aside.exists():
                _remove(aside)
            os.rename(final, aside)  # restored by _clean_leftovers if we die before the next rename
        try:
            os.rename(tmp, final)
        except OSError:
            if aside.exists():
                os.rename(aside, final)
            raise
        _fsync_path(self.root)
        if aside.exists():
            shutil.rmtree(aside, ignore_errors=True)

    def _point_latest(self, name: str) -> None:
        tmp = self.root / f"{TMP_PREFIX}latest-{os.getpid()}"
        try:
            _write_durably(tmp, name + "\n")
            os.replace(tmp, self.root / LATEST_FILE)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_path(self.root)

    def _clean_leftovers(self) -> None:
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(TMP_PREFIX):
                log.info("removing leftover of an interrupted checkpoint save: %s", path)
                _remove(path)
            elif path.name.startswith(REPLACED_PREFIX):
                original = self.root / path.name[len(REPLACED_PREFIX):]
                if original.exists():
                    _remove(path)
                else:  # died between moving the old copy aside and renaming the new one in
                    log.warning("restoring %s, moved aside by an interrupted save", original)
                    os.rename(path, original)
        _fsync_path(self.root)

    def _prune(self) -> None:
        """Delete checkpoints beyond the newest `keep_last` steps, except `latest` and every keep_every-th."""
        pointer = _read_pointer(self.root)
        for index, path in enumerate(_step_dirs(self.root)):
            step = int(STEP_DIR.fullmatch(path.name).group(1))
            if index < self.keep_last or path.name == pointer or (self.keep_every and step % self.keep_every == 0):
                continue
            # rename first, so a crash mid-delete leaves a leftover rather than a half checkpoint
            doomed = self.root / f"{TMP_PREFIX}prune-{path.name}"
            try:
                os.rename(path, doomed)
                shutil.rmtree(doomed)
            except OSError as err:
                log.warning("could not delete old checkpoint %s: %s", path, _describe(err))
