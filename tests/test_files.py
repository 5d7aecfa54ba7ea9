"""Atomic writes reach the disk before their rename; failed writes leave the old file alone."""

from __future__ import annotations

import os

import pytest

from samlib.files import write_atomic


def test_write_atomic_syncs_the_file_before_renaming_it(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = write_atomic(tmp_path / "a.json", b'{"a": 1}')
    monkeypatch.undo()
    assert path.read_bytes() == b'{"a": 1}'
    inode = path.stat().st_ino  # a rename keeps the inode: the temporary file's is the same
    assert ("replace", inode) in events
    assert ("fsync", inode) in events[: events.index(("replace", inode))]
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "table.csv"
    path.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"new, but only ha")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
