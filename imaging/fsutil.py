"""Atomic file writes: a kill never leaves a half-written output.

Every output of every stage goes through these helpers: write to a temporary file
in the destination folder (same filesystem, so ``os.replace`` is atomic), fsync,
then rename over the final name.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _default_mode() -> int:
    # os.umask can only be read by setting it; restore it at once.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str],
    suffix: str | None = None,
    *,
    fsync: bool = True,
    mode: int | None = None,
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    Args:
        path: final destination.
        suffix: suffix of the temporary file (keep ``.nii.gz`` so writers that
            pick a format from the name still do the right thing). Defaults to
            the final name's suffixes.
        fsync: flush the data to disk before the rename (default). A caller that
            writes many files may pass False and sync once at the end (``os.sync()``)
            before writing the file that refers to them; the rename stays atomic.
        mode: permission bits of the final file. Default: what ``open()`` would
            give (0o666 less the umask); ``mkstemp`` alone would leave 0o600.
            Pass 0o600 for secrets and link tables.

    Raises:
        Whatever the body raises; the temporary file is removed in that case.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    sfx = suffix if suffix is not None else "".join(final.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{sfx}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode() if mode is None else mode)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "w",
    *,
    fsync: bool = True,
    perm: int | None = None,
    **kwargs: Any,
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing and rename it over ``path`` on success.

    ``perm`` sets the final permission bits (e.g. 0o600 for link tables).
    """
    with atomic_path(path, fsync=fsync, mode=perm) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> None:
    with atomic_open(path, "w", fsync=fsync, encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, fsync: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", fsync=fsync)


def sync_filesystems(*paths: str | os.PathLike[str]) -> None:
    """Flush the filesystems holding ``paths`` (each once), not every filesystem of the node.

    For writers that skip the per-file fsync and make their files durable in one go.
    ``os.sync()`` would flush every mount of a shared cluster node (other users' dirty
    pages on Lustre/GPFS included); Linux's syncfs(2) flushes one filesystem. Python
    has no ``os.syncfs``, hence ctypes; elsewhere (or if the call fails) ``os.sync()``.
    """
    syncfs = _syncfs()
    seen: set[int] = set()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            dev = os.fstat(fd).st_dev
            if dev in seen:
                continue
            seen.add(dev)
            if syncfs is None or syncfs(fd) != 0:
                os.sync()
                return
        finally:
            os.close(fd)


@functools.lru_cache(maxsize=1)
def _syncfs() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
