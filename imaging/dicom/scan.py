"""Header-only, parallel, resumable scan of a DICOM export into an on-disk SQLite index.

Every file under the input folder gets one row in ``files``: DICOM headers that
matter for grouping and geometry (never the pixels), or the reason it is not
usable (non-DICOM, unreadable, truncated). Rows stream into SQLite in batches,
so memory does not grow with the number of files; a second scan re-reads only
files whose (path, size, mtime) changed. The index holds UIDs and paths (PHI):
it lives in the private folder, never inside the dataset.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from tqdm import tqdm

from imaging.dicom.header import HEADER_TAGS, read_header
from imaging.dicom.index_row import IndexRow

log = logging.getLogger(__name__)

SCHEMA_VERSION = 9  # 2: tkey holds diffusion, component, acquisition time and mosaic entries; 3: + pixel format, padding, FoR, Philips scale; 4: + policy; 5: tkey + Siemens slice times, PE polarity, bandwidth; 6: enhanced frames carry their ASL context; 7: + pixel_element (float pixel data); 8: enhanced frames carry their Philips scale slope; 9: + their image component from FrameType or (2005,1011)
COLUMNS = [
    "path", "size", "mtime", "kind", "error", "sop_class", "sop_uid", "study_uid", "series_uid",
    "patient_id", "modality", "ts", "rows", "cols", "n_frames", "iop", "ipp", "spacing",
    "image_type", "instance_number", "tkey", "slope", "intercept", "bits_alloc", "bits_stored",
    "pixel_rep", "samples", "photometric", "pixel_offset", "pixel_length", "frames", "params",
    "ref_series_uid", "segments", "high_bit", "padding", "padding_limit", "for_uid", "philips_ss", "rwvm",
    "policy", "pixel_element", "seen",
]
# Files per task sent to a worker: big enough to amortise inter-process traffic.
CHUNK = 64
# Below this many files to read, a process pool costs more than it saves.
MIN_FILES_FOR_POOL = 200


@dataclass
class ScanStats:
    """What one scan saw."""

    n_files: int = 0
    n_read: int = 0
    n_cached: int = 0
    n_dicom: int = 0
    n_non_dicom: int = 0
    n_unreadable: int = 0
    n_fast: int = 0  # of the files read: headers the fast reader read (the rest: pydicom)


def open_index(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (create) the index database with the ``files`` table.

    Raises:
        sqlite3.DatabaseError: the file is not an SQLite database.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(p))
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        # A stale index is a cache: rebuild rather than misread it.
        con.execute("DROP TABLE IF EXISTS files")
    cols = ", ".join(f"{c} {'TEXT PRIMARY KEY' if c == 'path' else ''}" for c in COLUMNS)
    con.execute(f"CREATE TABLE IF NOT EXISTS files ({cols})")
    con.execute("CREATE INDEX IF NOT EXISTS files_series ON files(series_uid)")
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    con.commit()
    with _suppress_oserror():
        os.chmod(p, 0o600)
    return con


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


def iter_files(root: Path, skip: frozenset[Path] = frozenset()) -> Iterator[os.DirEntry[str]]:
    """Every regular file under ``root`` (sorted per folder, hidden files included)."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list a folder of the export: %s", exc.strerror)  # its name may be a patient's
            continue
        subdirs = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if Path(entry.path) not in skip:
                    subdirs.append(Path(entry.path))
            elif entry.is_file():
                yield entry
        stack.extend(reversed(subdirs))


def read_chunk(items: list[tuple[str, int, float]]) -> tuple[list[tuple[Any, ...]], int]:
    """Worker: header rows for (path, size, mtime) items, in ``COLUMNS`` order (without ``seen``),
    and how many of them the fast reader read."""
    out, n_fast = [], 0
    for path, size, mtime in items:
        row, fast = read_header(path)
        n_fast += fast
        row["path"], row["size"], row["mtime"] = path, size, mtime
        # (_encode inlined: a call per column was ~10% of a Philips file's scan; a list, not a
        # generator, into the tuple: 43 -> 27 us a row)
        out.append(tuple([_JSON(v) if isinstance(v, _JSON_TYPES) else v for v in map(row.get, _ROW_COLUMNS)]))
    return out, n_fast


_JSON = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per call
_JSON_TYPES = (list, tuple, dict)
_ROW_COLUMNS = COLUMNS[:-1]


def _cached(con: sqlite3.Connection, items: list[tuple[str, int, float]]) -> set[str]:
    marks = ",".join("?" * len(items))
    rows = con.execute(f"SELECT path, size, mtime FROM files WHERE path IN ({marks})", [i[0] for i in items])
    known = {r[0]: (r[1], r[2]) for r in rows}
    return {p for p, s, m in items if known.get(p) == (s, m)}


def scan(
    input_dir: str | os.PathLike[str],
    index_path: str | os.PathLike[str],
    *,
    workers: int = 2,
    progress: bool = True,
    skip_dirs: tuple[str | os.PathLike[str], ...] = (),
) -> ScanStats:
    """Index every file under ``input_dir`` into the SQLite database at ``index_path``.

    Args:
        input_dir: the export's root folder.
        index_path: the SQLite file (in the private folder).
        workers: processes reading headers (1: read in this process).
        progress: show a tqdm bar.
        skip_dirs: folders under ``input_dir`` not to scan (labels, or outputs written inside the export).

    Returns:
        Counts of files seen, read, taken from the index, DICOM, non-DICOM and unreadable.

    Raises:
        NotADirectoryError: ``input_dir`` is not a folder.
    """
    root = Path(input_dir).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"input_dir '{input_dir}' is not a folder")
    skip = frozenset(Path(p).resolve() for p in skip_dirs)
    con = open_index(index_path)
    generation = int(con.execute("SELECT COALESCE(MAX(seen), 0) FROM files").fetchone()[0]) + 1
    stats = ScanStats()
    total = sum(1 for _ in iter_files(root, skip))
    bar = tqdm(total=total, desc="scan", unit="file", disable=not progress, leave=False)
    insert = f"INSERT OR REPLACE INTO files ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"

    def store(result: tuple[list[tuple[Any, ...]], int]) -> None:
        rows, n_fast = result
        con.executemany(insert, [(*r, generation) for r in rows])
        stats.n_read += len(rows)
        stats.n_fast += n_fast
        bar.update(len(rows))

    pool: ProcessPoolExecutor | None = None
    pending: set[Future[tuple[list[tuple[Any, ...]], int]]] = set()
    try:
        for chunk in _chunks(iter_files(root, skip), CHUNK):
            items = []
            for entry in chunk:
                try:
                    st = entry.stat()
                except OSError:
                    continue
                items.append((entry.path, st.st_size, st.st_mtime))
            stats.n_files += len(items)
            done = _cached(con, items)
            if done:
                con.executemany("UPDATE files SET seen=? WHERE path=?", [(generation, p) for p in done])
                stats.n_cached += len(done)
                bar.update(len(done))
            todo = [i for i in items if i[0] not in done]
            if not todo:
                continue
            if pool is None and workers > 1 and total - stats.n_cached >= MIN_FILES_FOR_POOL:
                pool = ProcessPoolExecutor(max_workers=workers)
            if pool is None:
                store(read_chunk(todo))
                continue
            pending.add(pool.submit(read_chunk, todo))
            # Bounded in-flight work: memory stays flat however big the export.
            while len(pending) >= 4 * workers:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    store(fut.result())
            con.commit()
        for fut in pending:
            store(fut.result())
        # Files gone since the last scan leave the index.
        con.execute("DELETE FROM files WHERE seen <> ?", (generation,))
        con.commit()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    for kind, n in con.execute("SELECT kind, COUNT(*) FROM files GROUP BY kind"):
        if kind == "dicom":
            stats.n_dicom = n
        elif kind == "non_dicom":
            stats.n_non_dicom = n
        elif kind == "unreadable":
            stats.n_unreadable = n
    con.close()
    log.info(
        "scan: %d files (%d read, %d of them by the fast reader; %d unchanged): %d DICOM, %d non-DICOM, "
        "%d unreadable", stats.n_files, stats.n_read, stats.n_fast, stats.n_cached, stats.n_dicom,
        stats.n_non_dicom, stats.n_unreadable,
    )
    return stats


def _chunks(it: Iterator[os.DirEntry[str]], n: int) -> Iterator[list[os.DirEntry[str]]]:
    chunk: list[os.DirEntry[str]] = []
    for item in it:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def decode_row(row: sqlite3.Row) -> IndexRow:
    """An index row (all columns or those selected) as a dict with the JSON columns decoded."""
    out = dict(row)
    for c in _JSON_COLUMNS:
        if out.get(c) is not None:
            out[c] = json.loads(out[c])
    return cast(IndexRow, out)  # the columns are IndexRow's keys (tests/unit/test_index_row.py)


# The columns stored as JSON text (read_chunk encodes every list/dict value).
_JSON_COLUMNS = ("iop", "ipp", "spacing", "image_type", "tkey", "frames", "params", "segments", "rwvm", "policy")


__all__ = ["HEADER_TAGS", "ScanStats", "decode_row", "iter_files", "open_index", "scan"]
