"""sync_filesystems: one syncfs(2) per filesystem of the given paths, os.sync() only as a fallback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from imaging import fsutil


def test_linux_uses_syncfs_once_per_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fsutil._syncfs()
    assert real is not None  # glibc has had syncfs since 2.14
    calls: list[int] = []

    def counting(fd: int) -> Any:
        calls.append(os.fstat(fd).st_dev)
        return real(fd)

    monkeypatch.setattr(fsutil, "_syncfs", lambda: counting)
    monkeypatch.setattr(os, "sync", lambda: pytest.fail("os.sync() flushes every mount of the node"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x")
    fsutil.sync_filesystems(tmp_path, tmp_path / "a", tmp_path / "a" / "f")
    assert calls == [os.stat(tmp_path).st_dev]
    devices = {os.stat(p).st_dev for p in (tmp_path, "/proc")}
    calls.clear()
    fsutil.sync_filesystems(tmp_path, "/proc")
    assert len(calls) == len(devices) == 2


def test_a_failing_syncfs_falls_back_to_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []
    monkeypatch.setattr(fsutil, "_syncfs", lambda: (lambda fd: -1))
    monkeypatch.setattr(os, "sync", lambda: synced.append(True))
    fsutil.sync_filesystems(tmp_path)
    assert synced == [True]


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fsutil.sync_filesystems(tmp_path / "gone")
