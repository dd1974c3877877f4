"""Audit files of every kind a pipeline writes, streaming (memory does not grow with size).

Dispatch by content and suffix: DICOM (all elements), NIfTI headers (descrip,
aux_file, intent_name, db_name, extensions; never the voxels), JSON (JSON path of
each hit; DICOM-keyword keys also get the DICOM pattern rules), CSV (column),
text and logs (line), PNG (tEXt/zTXt/iTXt/eXIf chunks), gzip and zip archives
(members), and a raw byte scan for anything else (checkpoints, SQLite, pickles).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

from pydicom.datadict import dictionary_VR, tag_for_keyword
from tqdm import tqdm

from imaging.audit.dicom_scan import (
    ALWAYS_DATE_TAGS,
    DUMMY_DATES,
    PROFILE_DATE_TAGS,
    _pseudonymous,
    scan_dicom,
)
from imaging.audit.needles import Hit, Needles, as_needles, mask, normalize
from imaging.audit.nifti_scan import read_nifti_file

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_JSON_PARSE = 64 << 20
MAX_DECODED = 256 << 20
MAX_PREFILTER = 64 << 20  # text files up to this are looked at whole before cell by cell  # gzip content or a zip member up to this is decoded in memory
GZIP_MAGIC = b"\x1f\x8b"
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})")
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
                yield from _materialised(_raw(gz, needles, where, "gzip content"))  # type: ignore[arg-type]
            return
        except (OSError, EOFError, zlib.error):
            pass  # not a readable gzip after all: its own bytes
    with open(path, "rb") as fh:
        yield from _raw(fh, needles, where, "bytes")


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
            yield from _raw(gz, needles, where, "gzip content")  # type: ignore[arg-type]
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
        yield from _json(fh, size, needles, where, patterns)
    elif name.endswith(".jsonl"):
        yield from _jsonl(fh, needles, where, patterns)
    elif name.endswith(".csv"):
        yield from _csv(fh, size, needles, where)
    elif name.endswith(tuple(TEXT_SUFFIXES)):
        yield from _lines(fh, size, needles, where)
    elif head[:4] == b"PK\x03\x04":
        yield from _zip(fh, needles, where, patterns)
    else:
        yield from _raw(fh, needles, where, "bytes")


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


def _views(text: str) -> Iterator[str]:
    """``text`` and its decoded forms: ``\\u00fc``/``\\xfc`` escapes (logged reprs, JSON
    embedded in text) and percent-encoding (URIs, artifact paths)."""
    yield text
    if "\\" in text:
        unescaped = _ESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), text)
        if unescaped != text:
            yield unescaped
    if "%" in text:
        unquoted = unquote(text)
        if unquoted != text:
            yield unquoted


def _text_hits(text: str, needles: Needles, where: str, field: str) -> Iterator[Hit]:
    seen: set[tuple[str, str]] = set()
    for view in _views(text):
        for rule, found in needles.find(view):
            key = (rule, normalize(found))
            if key not in seen:  # the same value seen in two views is one hit
                seen.add(key)
                yield Hit(where, field, rule, mask(found, rule))


def _raw(fh: IO[bytes], needles: Needles, where: str, field: str) -> Iterator[Hit]:
    """Chunked scan of bytes decoded as latin-1 (overlapping by the longest needle)."""
    overlap = max(4 * needles.max_len - 1, 0)  # x4: a UTF-32 needle spans four bytes a character
    tail, offset = "", 0
    seen: set[tuple[str, str]] = set()
    while chunk := fh.read(CHUNK):
        text = tail + chunk.decode("latin-1")
        # UTF-16/32 strings (NumPy unicode arrays, Windows tools) match once NULs are dropped.
        views = [text, text.replace("\x00", "")] if "\x00" in text else [text]
        if "\\" in text:
            views.append(_ESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), text))
        for rule, found in (hit for view in views for hit in needles.find(view)):
            key = (rule, normalize(found))
            if key not in seen:  # one hit per value and file: a checkpoint may repeat it
                seen.add(key)
                yield Hit(where, f"{field} @~{offset}", rule, mask(found, rule))
        tail = text[-overlap:] if overlap else ""
        offset += len(chunk)


def _text_stream(fh: IO[bytes]) -> io.TextIOWrapper:
    return io.TextIOWrapper(fh, encoding="utf-8", errors="replace", newline="")


def _worth_locating(fh: IO[bytes], size: int, needles: Needles) -> IO[bytes] | None:
    """The stream to read line by line or cell by cell, or None when the whole text, in
    each of its views, holds no needle: one look at the file instead of one a cell
    (most outputs are clean). A hit in a cell or line is a hit in the whole text too."""
    if size > MAX_PREFILTER:
        return fh
    data = fh.read()
    text = data.decode("utf-8", "replace")
    if not any(True for view in _views(text) for _hit in needles.find(view)):
        return None
    return io.BytesIO(data)


def _lines(fh: IO[bytes], size: int, needles: Needles, where: str) -> Iterator[Hit]:
    located = _worth_locating(fh, size, needles)
    if located is None:
        return
    for n, line in enumerate(_text_stream(located), 1):
        yield from _text_hits(line, needles, where, f"line {n}")


def _csv(fh: IO[bytes], size: int, needles: Needles, where: str) -> Iterator[Hit]:
    located = _worth_locating(fh, size, needles)
    if located is None:
        return
    reader = csv.reader(_text_stream(located))
    header = next(reader, [])
    for i, col in enumerate(header):
        yield from _text_hits(col, needles, where, f"header column {i + 1}")
    for n, row in enumerate(reader, 2):
        for i, cell in enumerate(row):
            col = header[i] if i < len(header) else f"column {i + 1}"
            yield from _text_hits(cell, needles, where, f"line {n} {col}")


def _json(fh: IO[bytes], size: int, needles: Needles, where: str, patterns: bool) -> Iterator[Hit]:
    """A JSON document parsed, so ``\\u00fc`` escapes are compared as the letters they are."""
    if size > MAX_JSON_PARSE:
        yield from _lines(fh, size, needles, where)
        return
    data = json.loads(fh.read())
    yield from _walk_json(data, "$", needles, where, patterns)


def _jsonl(fh: IO[bytes], needles: Needles, where: str, patterns: bool) -> Iterator[Hit]:
    """JSON Lines: each line parsed (escapes resolved); a line that is not JSON read as text."""
    for n, line in enumerate(_text_stream(fh), 1):
        try:
            data = json.loads(line)
        except ValueError:
            yield from _text_hits(line, needles, where, f"line {n}")
            continue
        yield from _walk_json(data, f"line {n} $", needles, where, patterns)


def _walk_json(data: Any, at: str, needles: Needles, where: str, patterns: bool) -> Iterator[Hit]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _text_hits(str(key), needles, where, f"{at} (key)")
            yield from _walk_json(value, f"{at}.{key}", needles, where, patterns)
            if patterns and isinstance(value, str) and value.strip():
                yield from _keyword_rules(str(key), value, where, f"{at}.{key}")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _walk_json(value, f"{at}[{i}]", needles, where, patterns)
    elif data is not None:
        yield from _text_hits(str(data), needles, where, at)


def _keyword_rules(key: str, value: str, where: str, field: str) -> Iterator[Hit]:
    """DICOM pattern rules for JSON keys that are DICOM keywords (sidecars)."""
    tag = tag_for_keyword(key)
    if tag is None:
        return
    vr = dictionary_VR(tag)
    if vr == "PN" and not _pseudonymous(value):
        yield Hit(where, field, "person-name", mask(value, "person-name"))
    elif (
        vr in ("DA", "DT")
        and int(tag) in PROFILE_DATE_TAGS | ALWAYS_DATE_TAGS
        and value.strip() not in DUMMY_DATES
    ):
        yield Hit(where, field, "date", mask(value, "date"))


def _nifti(path: Path, needles: Needles, where: str) -> Iterator[Hit]:
    text = read_nifti_file(path)  # header text and extensions only; voxels stay on disk
    for key, value in text.fields.items():
        # NULs inside a field would hide the rest of it from a C-string reader, not from us.
        yield from _text_hits(value.replace(b"\x00", b" ").decode("latin-1"), needles, where, f"header {key}")
    for i, (code, content) in enumerate(text.extensions):
        yield from _raw(io.BytesIO(content), needles, where, f"extension {i} (code {code})")


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
            yield from _text_hits(text, needles, where, f"PNG {ctype.decode()} chunk")
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
            yield from _text_hits(info.filename, needles, where, f"zip member name {info.filename}")
            if info.is_dir():
                continue
            at = f"zip member {info.filename}"
            with zf.open(info) as member:
                if info.file_size > MAX_DECODED:
                    yield from _raw(member, needles, where, at)
                    continue
                data = member.read()
            try:
                found = list(_content(info.filename.lower(), data[:132], io.BytesIO(data),
                                      len(data), needles, where, patterns))
            except Exception:  # a member that does not parse: its bytes
                found = list(_raw(io.BytesIO(data), needles, where, "bytes"))
            yield from (Hit(where, f"{at}: {h.field}", h.rule, h.masked) for h in found)
