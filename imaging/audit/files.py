"""Audit files of every kind a pipeline writes, streaming (memory does not grow with size).

Dispatch by content and suffix: DICOM (all elements), NIfTI headers (descrip,
aux_file, intent_name, db_name, extensions; never the voxels), JSON (JSON path of
each hit; DICOM-keyword keys also get the DICOM pattern rules), CSV (column),
text and logs (line), PNG (tEXt/zTXt/iTXt/eXIf chunks), gzip (decompressed and read
as its content) and zip archives (members, each by its type), and a raw byte scan
for anything else (checkpoints, SQLite, pickles). Text readers: :mod:`.text_scan`.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

from imaging.audit.dicom_scan import scan_dicom
from imaging.audit.needles import Hit, Needles, as_needles, mask
from imaging.audit.nifti_scan import read_nifti_file
from imaging.audit.text_scan import csv_hits, json_hits, jsonl_hits, lines_hits, raw_hits, text_hits

log = logging.getLogger(__name__)

MAX_DECODED = 256 << 20  # gzip content or a zip member up to this is decoded in memory
GZIP_MAGIC = b"\x1f\x8b"
TEXT_SUFFIXES = {
    ".txt",
    ".log",
    ".out",
    ".err",
    ".yaml",
    ".yml",
    ".md",
    ".cfg",
    ".ini",
    ".toml",
    ".py",
    ".sh",
    ".html",
    ".xml",
    ".tsv",
    ".jsonl",
    ".sbatch",
    ".conf",
    ".rst",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scan_paths(
    paths: Iterable[str | os.PathLike[str]],
    needles: Needles | Iterable[str],
    *,
    patterns: bool = True,
    progress: bool = False,
) -> list[Hit]:
    """Scan files and folders (recursively); return every hit.

    Args:
        paths: files or folders.
        needles: values to look for (:func:`imaging.audit.needles.build_needles`), or
            plain tokens (reported as ``canary``).
        patterns: also apply the DICOM pattern rules (person names, unshifted dates).
        progress: show a progress bar over files.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    needles = as_needles(needles)
    hits: list[Hit] = []
    for path, rel, is_file in tqdm(_iter_files(paths), unit="file", desc="audit", disable=not progress):
        # The file's own name and folders (below the scanned root) are output too.
        field = "file path" if is_file else "folder path"
        hits.extend(Hit(str(path), field, rule, mask(found, rule)) for rule, found in needles.find(rel))
        if is_file:
            hits.extend(scan_file(path, needles, patterns=patterns))
    return hits


def _iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[Path, str, bool]]:
    """(file, its path relative to the scanned root, True) for files and folders, in a stable
    order; an empty folder comes as (folder, relative path, False): its name is output too."""
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise FileNotFoundError(f"audit: path '{path}' does not exist")
        if path.is_file():
            yield path, path.name, True
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            if not dirnames and not filenames and Path(dirpath) != path:
                yield Path(dirpath), Path(dirpath).relative_to(path).as_posix(), False
            for name in sorted(filenames):
                full = Path(dirpath) / name
                yield full, full.relative_to(path).as_posix(), True


def scan_file(
    path: Path, needles: Needles, *, patterns: bool = True, where: str | None = None
) -> Iterator[Hit]:
    """Hits of one file, read in its decoded form (chosen by content and suffix).

    A gzip file is decompressed and read as what it holds (``x.json.gz`` as JSON);
    a file whose structured read fails is scanned as raw bytes (decompressed for gzip).
    """
    where = where or str(path)
    name = path.name.lower()
    with open(path, "rb") as fh:
        head = fh.read(132)
    try:
        if name.endswith((".nii", ".nii.gz", ".hdr")):
            yield from _nifti(path, needles, where)
        elif head[:2] == GZIP_MAGIC:
            yield from _gzip(path, name, needles, where, patterns)
        else:
            with open(path, "rb") as fh:
                yield from _content(name, head, fh, path.stat().st_size, needles, where, patterns)
    except Exception as exc:  # a damaged file must not hide its bytes from the audit
        log.info(
            "audit: structured read of %s failed (%s); scanning raw bytes",
            where,
            type(exc).__name__,
        )
        yield from _raw_fallback(path, head, needles, where)


def _raw_fallback(path: Path, head: bytes, needles: Needles, where: str) -> Iterator[Hit]:
    if head[:2] == GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as gz:
                yield from _materialised(raw_hits(gz, needles, where, "gzip content"))  # type: ignore[arg-type]
            return
        except (OSError, EOFError, zlib.error):
            pass  # not a readable gzip after all: its own bytes
    with open(path, "rb") as fh:
        yield from raw_hits(fh, needles, where, "bytes")


def _materialised(hits: Iterator[Hit]) -> Iterator[Hit]:
    """All or nothing: a stream that fails half-way yields no partial hits before the fallback."""
    yield from list(hits)


def _gzip(path: Path, name: str, needles: Needles, where: str, patterns: bool) -> Iterator[Hit]:
    """A gzip file read as its content: ``.json.gz`` as JSON, ``.csv.gz`` as CSV, and so on."""
    inner = name[:-3] if name.endswith(".gz") else name
    with gzip.open(path, "rb") as gz:
        data = gz.read(MAX_DECODED + 1)  # type: ignore[union-attr]
    if len(data) > MAX_DECODED:  # too large to hold: stream its bytes
        with gzip.open(path, "rb") as gz:
            yield from raw_hits(gz, needles, where, "gzip content")  # type: ignore[arg-type]
        return
    yield from _materialised(
        _content(inner, data[:132], io.BytesIO(data), len(data), needles, where, patterns)
    )


def _content(
    name: str, head: bytes, fh: IO[bytes], size: int, needles: Needles, where: str, patterns: bool
) -> Iterator[Hit]:
    """Hits of one byte stream, dispatched by its first bytes and its (inner) name."""
    if (
        head[128:132] == b"DICM"
        or name.endswith(".dcm")
        or name == "dicomdir"
        or head[:2] in (b"\x08\x00", b"\x02\x00")
    ):
        yield from _preamble(head, needles, where)
        yield from _relabel(scan_dicom(fh, needles, patterns), where)
    elif head.startswith(PNG_MAGIC):
        yield from _png(fh, needles, where)
    elif name.endswith(".json"):
        yield from json_hits(fh, size, needles, where, patterns)
    elif name.endswith(".jsonl"):
        yield from jsonl_hits(fh, needles, where, patterns)
    elif name.endswith(".csv"):
        yield from csv_hits(fh, size, needles, where)
    elif name.endswith(tuple(TEXT_SUFFIXES)):
        yield from lines_hits(fh, size, needles, where)
    elif head[:4] == b"PK\x03\x04":
        yield from _zip(fh, needles, where, patterns)
    else:
        yield from raw_hits(fh, needles, where, "bytes")


def _preamble(head: bytes, needles: Needles, where: str) -> Iterator[Hit]:
    """Hits in the 128-byte file preamble (free for applications: exporters put names there)."""
    if len(head) < 132 or head[128:132] != b"DICM":
        return
    text = head[:128].decode("latin-1")
    for view in (text, text.replace("\x00", "")):
        for rule, found in needles.find(view):
            offset = text.lower().find(found.lower())
            yield Hit(where, f"preamble @{offset if offset >= 0 else 0}", rule, mask(found, rule))
        if "\x00" not in text:
            break


def _relabel(hits: Iterator[Hit], where: str) -> Iterator[Hit]:
    found = list(hits)  # materialise so a parse error falls back before anything is yielded
    for hit in found:
        yield Hit(where, hit.field, hit.rule, hit.masked)


def _nifti(path: Path, needles: Needles, where: str) -> Iterator[Hit]:
    text = read_nifti_file(path)  # header text and extensions only; voxels stay on disk
    for key, value in text.fields.items():
        # NULs inside a field would hide the rest of it from a C-string reader, not from us.
        yield from text_hits(value.replace(b"\x00", b" ").decode("latin-1"), needles, where, f"header {key}")
    for i, (code, content) in enumerate(text.extensions):
        yield from raw_hits(io.BytesIO(content), needles, where, f"extension {i} (code {code})")


def _png(fh: IO[bytes], needles: Needles, where: str) -> Iterator[Hit]:
    """PNG text chunks (tEXt, zTXt, iTXt; compressed ones inflated) and EXIF, chunk by chunk
    (pixels skipped)."""
    fh.read(8)
    while header := fh.read(8):
        if len(header) < 8:
            break
        length, ctype = struct.unpack(">I4s", header)
        if ctype in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"):
            data = fh.read(length)
            fh.read(4)
            text = _png_text(ctype, data)
            yield from text_hits(text, needles, where, f"PNG {ctype.decode()} chunk")
        else:
            fh.seek(length + 4, os.SEEK_CUR)
        if ctype == b"IEND":
            break


def _png_text(ctype: bytes, data: bytes) -> str:
    if ctype == b"zTXt":
        key, _, rest = data.partition(b"\x00")
        return key.decode("latin-1") + " " + zlib.decompress(rest[1:]).decode("latin-1", "replace")
    if ctype == b"iTXt":
        key, _, rest = data.partition(b"\x00")
        compressed, rest = rest[0], rest[2:]
        lang, _, rest = rest.partition(b"\x00")
        tkey, _, text = rest.partition(b"\x00")
        body = zlib.decompress(text) if compressed else text
        return " ".join(p.decode("utf-8", "replace") for p in (key, lang, tkey, body))
    return data.decode("latin-1")


def _zip(fh: IO[bytes], needles: Needles, where: str, patterns: bool) -> Iterator[Hit]:
    """Each member by its name and as what it holds (a JSON member parsed, and so on)."""
    with zipfile.ZipFile(fh) as zf:
        for info in zf.infolist():
            yield from text_hits(info.filename, needles, where, f"zip member name {info.filename}")
            if info.is_dir():
                continue
            at = f"zip member {info.filename}"
            with zf.open(info) as member:
                if info.file_size > MAX_DECODED:
                    yield from raw_hits(member, needles, where, at)
                    continue
                data = member.read()
            try:
                found = list(_content(info.filename.lower(), data[:132], io.BytesIO(data),
                                      len(data), needles, where, patterns))
            except Exception:  # a member that does not parse: its bytes
                found = list(raw_hits(io.BytesIO(data), needles, where, "bytes"))
            yield from (Hit(where, f"{at}: {h.field}", h.rule, h.masked) for h in found)
