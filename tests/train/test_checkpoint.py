"""Checkpoint store: HF roundtrip, pruning, corruption, leftovers, full disk, SIGKILL mid-save."""

import errno
import json
import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from mirrorl.config import ModelConfig
from mirrorl.models import build_tiny
from mirrorl.train import checkpoint as ckpt
from mirrorl.train.checkpoint import CheckpointError, CheckpointStore, find_latest, verify


def _writer(payload: str):
    def write(path: Path) -> None:
        (path / "weights.bin").write_bytes(payload.encode() * 100)
        (path / "sub").mkdir()
        (path / "sub" / "note.txt").write_text(payload)
    return write


def _store_with(tmp_path: Path, steps: list[int], **kwargs) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "checkpoints", **kwargs)
    for step in steps:
        store.save(step, _writer(f"payload {step}"), config={"run": {"seed": step}})
    return store


def _steps_on_disk(root: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*"))


def test_tiny_model_roundtrip_is_bit_identical_and_manifest_lists_every_file(tmp_path):
    model, tokenizer = build_tiny(ModelConfig(), seed=0)
    store = CheckpointStore(tmp_path / "checkpoints")

    def write(path: Path) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    path = store.save(123, write, config="rl:\n  lr: 1e-6\n")
    assert path == tmp_path / "checkpoints" / "step-000123"
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-000123\n"
    latest = store.latest()
    assert latest is not None and (latest.path, latest.step) == (path, 123)
    manifest = latest.manifest
    assert manifest["config"] == "rl:\n  lr: 1e-6\n" and manifest["mirrorl_version"] == "0.1.0"
    assert manifest["format_version"] == ckpt.FORMAT_VERSION and manifest["created"].endswith("+00:00")
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk and "model.safetensors" in on_disk
    size = (path / "model.safetensors").stat().st_size
    assert manifest["files"]["model.safetensors"]["size"] == size
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    loaded = AutoModelForCausalLM.from_pretrained(latest.path)  # the directory on its own
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_keeps_last_n_plus_permanent_and_never_the_one_latest_names(tmp_path):
    store = _store_with(tmp_path, [1, 2, 3, 4, 5, 6], keep_last=2, keep_every=3)
    assert _steps_on_disk(store.root) == [3, 5, 6]
    # a run resumed from step 6 after steps 20 and 21 were written: the new save is not among the newest two
    # by step, yet it is `latest`, so it must survive pruning
    _store_with(tmp_path, [20, 21], keep_last=2)
    store.save(7, _writer("payload 7"))
    # newest two by step: 21 and 20; 21 is also a multiple of 3; 7 stays only because it is latest
    assert _steps_on_disk(store.root) == [7, 20, 21] and store.latest().step == 7
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]


def _flip_byte(path: Path) -> None:
    data = bytearray((path / "weights.bin").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "weights.bin").write_bytes(bytes(data))


CORRUPTIONS = {
    "flipped byte": _flip_byte,
    "no manifest": lambda path: (path / "manifest.json").unlink(),
    "truncated file": lambda path: os.truncate(path / "weights.bin", 10),
    "missing file": lambda path: (path / "sub" / "note.txt").unlink(),
    "unparsable manifest": lambda path: (path / "manifest.json").write_text('{"files": {'),
    "wrong step in manifest": lambda path: (path / "manifest.json").write_text(
        (path / "manifest.json").read_text().replace('"step": 2', '"step": 1')),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupted_newest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, corruption):
    store = _store_with(tmp_path, [1, 2])
    assert store.latest().step == 2
    CORRUPTIONS[corruption](store.root / "step-000002")
    with caplog.at_level(logging.WARNING, logger="mirrorl.train.checkpoint"):
        found = find_latest(store.root)
    assert found is not None and found.step == 1
    assert "step-000002" in caplog.text
    with pytest.raises(ValueError, match="step-000002"):
        verify(store.root / "step-000002")
    if corruption != "flipped byte":  # caught without reading the bytes
        with pytest.raises(ValueError, match="step-000002"):
            verify(store.root / "step-000002", checksums=False)
    # without the pointer, the scan reaches the same answer
    (store.root / "latest").unlink()
    assert find_latest(store.root).step == 1


def test_pointer_missing_or_garbage_falls_back_to_the_highest_valid_step(tmp_path):
    store = _store_with(tmp_path, [1, 2, 3])
    (store.root / "latest").write_text("../../etc\n")
    assert store.latest().step == 3
    (store.root / "latest").unlink()
    assert store.latest().step == 3
    assert find_latest(tmp_path / "nowhere") is None
    assert CheckpointStore(tmp_path / "empty").latest() is None


def test_leftover_temp_dirs_are_ignored_then_removed_when_the_store_opens(tmp_path):
    root = _store_with(tmp_path, [1]).root
    leftover = root / ".tmp-2-99999"
    leftover.mkdir()
    (leftover / "weights.bin").write_bytes(b"half")
    (leftover / "manifest.json").write_text(json.dumps({"format_version": 1, "step": 2, "files": {}}))
    (root / ".tmp-latest-99999").write_text("step-000002\n")
    assert find_latest(root).step == 1 and leftover.exists()  # reading ignores it and deletes nothing
    store = CheckpointStore(root)
    assert not leftover.exists() and not (root / ".tmp-latest-99999").exists()
    assert store.latest().step == 1


def test_full_disk_in_the_writer_keeps_previous_checkpoint_and_latest(tmp_path):
    store = _store_with(tmp_path, [1])
    before = {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()}

    def write(path: Path) -> None:
        (path / "weights.bin").write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path / "optimizer.pt"))

    with pytest.raises(CheckpointError) as info:
        store.save(2, write)
    message = str(info.value)
    assert "\n" not in message and "step 2" in message and str(store.root) in message
    assert "No space left on device" in message and "step-000001" in message
    assert info.value.__cause__.errno == errno.ENOSPC
    assert {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()} == before  # nothing changed or left
    assert store.latest().step == 1


@pytest.mark.parametrize("failing", ["manifest", "rename"])
def test_full_disk_after_the_payload_keeps_previous_checkpoint_and_latest(tmp_path, monkeypatch, failing):
    store = _store_with(tmp_path, [1])
    before = {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()}

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing == "manifest":
        monkeypatch.setattr(ckpt, "_write_durably", no_space)
    else:
        monkeypatch.setattr(ckpt.os, "rename", no_space)
    with pytest.raises(CheckpointError, match="step 2 was not saved.*No space left"):
        store.save(2, _writer("payload 2"))
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()} == before
    assert store.latest().step == 1


def test_resaving_a_step_replaces_it_and_an_interrupted_replace_is_undone(tmp_path, monkeypatch):
    store = _store_with(tmp_path, [1, 2])
    store.save(2, _writer("again"))
    assert (store.root / "step-000002" / "sub" / "note.txt").read_text() == "again"
    # die between moving the old step-2 aside and renaming the new one in
    real_rename, calls = os.rename, []

    def rename_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # not an Exception: nothing is rolled back, like a kill
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        store.save(2, _writer("third"))
    monkeypatch.undo()
    assert find_latest(store.root).step == 1  # the pointer names a missing directory: previous one
    store = CheckpointStore(store.root)  # restores the copy that was moved aside
    assert store.latest().step == 2
    assert (store.root / "step-000002" / "sub" / "note.txt").read_text() == "again"


# A child process saves step 2 (step 1 exists) and stops at one point of the save until it is killed.
CHILD = textwrap.dedent("""
    import os, shutil, sys, time
    from pathlib import Path
    from mirrorl.train import checkpoint as ckpt

    root, stage = Path(sys.argv[1]), sys.argv[2]

    def stop_here():
        print("ready", flush=True)
        time.sleep(120)

    def pause_on(module, name, when=lambda *args: True):
        real = getattr(module, name)
        def wrapper(*args, **kwargs):
            if when(*args):
                stop_here()
            return real(*args, **kwargs)
        setattr(module, name, wrapper)

    def write(path):
        (path / "weights.bin").write_bytes(b"new" * 1000)
        if stage == "writer":
            (path / "optimizer.pt").write_bytes(b"half")
            stop_here()
        (path / "sub").mkdir()
        (path / "sub" / "note.txt").write_text("new")

    if stage == "manifest":  # half the manifest is on disk
        real_write = ckpt._write_durably
        def torn(path, text):
            if path.name == "manifest.json":
                path.write_text(text[: len(text) // 2])
                stop_here()
            real_write(path, text)
        ckpt._write_durably = torn
    hooks = {"seal": (ckpt, "_hash_file"), "rename": (os, "rename"), "latest": (os, "replace"),
             "prune": (shutil, "rmtree"), "replace": (os, "rename")}
    if stage in hooks:
        calls = []
        pause_on(*hooks[stage], when=lambda *args: calls.append(1) or stage != "replace" or len(calls) == 2)
    ckpt.CheckpointStore(root, keep_last=1).save(2, write)
    print("finished", flush=True)
""")

# stage -> step that latest() must return right after the kill (before a store cleans up)
KILL_POINTS = {"writer": 1, "seal": 1, "manifest": 1, "rename": 1, "latest": 1, "prune": 2, "replace": 1}


def test_sigkill_at_any_point_of_a_save_leaves_a_valid_latest(tmp_path):
    children = {}
    for stage in KILL_POINTS:
        root = tmp_path / stage
        _store_with(root, [1, 2] if stage == "replace" else [1], keep_last=2)
        children[stage] = subprocess.Popen([sys.executable, "-c", CHILD, str(root / "checkpoints"), stage],
                                           stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        for stage, child in children.items():
            ready, _, _ = select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready and child.stdout.readline() == "ready\n", f"child for {stage!r} never reached its stop"
            child.send_signal(signal.SIGKILL)
            assert child.wait(10) == -signal.SIGKILL
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
    for stage, expected in KILL_POINTS.items():
        root = tmp_path / stage / "checkpoints"
        found = find_latest(root)
        assert found is not None and found.step == expected, stage
        payload = (found.path / "sub" / "note.txt").read_text()
        assert payload == ("new" if expected == 2 else "payload 1"), stage
        store = CheckpointStore(root, keep_last=1)  # cleans leftovers, restores a copy moved aside
        assert not [p.name for p in root.iterdir() if p.name.startswith(".")], stage
        assert store.latest().step == (2 if stage == "replace" else expected), stage
        store.save(3, _writer("payload 3"))
        assert store.latest().step == 3 and _steps_on_disk(root) == [3], stage
