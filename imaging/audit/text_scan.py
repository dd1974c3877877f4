"""Text in its decoded form: lines, CSV cells, parsed JSON (escapes resolved), raw bytes.

Every text is also looked at decoded: ``\\u00fc``/``\\xfc`` escapes (logged reprs, JSON
embedded in text) and percent-encoding (URIs, artifact paths). Small text files are
first looked at whole, and only read line by line or cell by cell when something is
there (most outputs are clean).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import unquote

from pydicom.datadict import dictionary_VR, tag_for_keyword

from imaging.audit.dicom_scan import ALWAYS_DATE_TAGS, DUMMY_DATES, PROFILE_DATE_TAGS, _pseudonymous
from imaging.audit.needles import Hit, Needles, mask, normalize

CHUNK = 1 << 20
MAX_JSON_PARSE = 64 << 20
MAX_PREFILTER = 64 << 20  # text files up to this are looked at whole before cell by cell
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})")


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), text)


def views(text: str) -> Iterator[str]:
    """``text`` and its decoded forms: ``\\u00fc``/``\\xfc`` escapes (logged reprs, JSON
    embedded in text) and percent-encoding (URIs, artifact paths)."""
    yield text
    if "\\" in text:
        unescaped = _unescape(text)
        if unescaped != text:
            yield unescaped
    if "%" in text:
        unquoted = unquote(text)
        if unquoted != text:
            yield unquoted


def text_hits(text: str, needles: Needles, where: str, field: str) -> Iterator[Hit]:
    seen: set[tuple[str, str]] = set()
    for view in views(text):
        for rule, found in needles.find(view):
            key = (rule, normalize(found))
            if key not in seen:  # the same value seen in two views is one hit
                seen.add(key)
                yield Hit(where, field, rule, mask(found, rule))


def raw_hits(fh: IO[bytes], needles: Needles, where: str, field: str) -> Iterator[Hit]:
    """Chunked scan of bytes decoded as latin-1 (overlapping by the longest needle)."""
    overlap = max(4 * needles.max_len - 1, 0)  # x4: a UTF-32 needle spans four bytes a character
    tail, offset = "", 0
    seen: set[tuple[str, str]] = set()
    while chunk := fh.read(CHUNK):
        text = tail + chunk.decode("latin-1")
        # UTF-16/32 strings (NumPy unicode arrays, Windows tools) match once NULs are dropped.
        forms = [text, text.replace("\x00", "")] if "\x00" in text else [text]
        if "\\" in text:
            forms.append(_unescape(text))
        for rule, found in (hit for form in forms for hit in needles.find(form)):
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
    if not any(True for view in views(text) for _hit in needles.find(view)):
        return None
    return io.BytesIO(data)


def lines_hits(fh: IO[bytes], size: int, needles: Needles, where: str) -> Iterator[Hit]:
    located = _worth_locating(fh, size, needles)
    if located is None:
        return
    for n, line in enumerate(_text_stream(located), 1):
        yield from text_hits(line, needles, where, f"line {n}")


def csv_hits(fh: IO[bytes], size: int, needles: Needles, where: str) -> Iterator[Hit]:
    located = _worth_locating(fh, size, needles)
    if located is None:
        return
    reader = csv.reader(_text_stream(located))
    header = next(reader, [])
    for i, col in enumerate(header):
        yield from text_hits(col, needles, where, f"header column {i + 1}")
    for n, row in enumerate(reader, 2):
        for i, cell in enumerate(row):
            col = header[i] if i < len(header) else f"column {i + 1}"
            yield from text_hits(cell, needles, where, f"line {n} {col}")


def json_hits(fh: IO[bytes], size: int, needles: Needles, where: str, patterns: bool) -> Iterator[Hit]:
    """A JSON document parsed, so ``\\u00fc`` escapes are compared as the letters they are."""
    if size > MAX_JSON_PARSE:
        yield from lines_hits(fh, size, needles, where)
        return
    data = json.loads(fh.read())
    yield from _walk_json(data, "$", needles, where, patterns)


def jsonl_hits(fh: IO[bytes], needles: Needles, where: str, patterns: bool) -> Iterator[Hit]:
    """JSON Lines: each line parsed (escapes resolved); a line that is not JSON read as text."""
    for n, line in enumerate(_text_stream(fh), 1):
        try:
            data = json.loads(line)
        except ValueError:
            yield from text_hits(line, needles, where, f"line {n}")
            continue
        yield from _walk_json(data, f"line {n} $", needles, where, patterns)


def _walk_json(data: Any, at: str, needles: Needles, where: str, patterns: bool) -> Iterator[Hit]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from text_hits(str(key), needles, where, f"{at} (key)")
            yield from _walk_json(value, f"{at}.{key}", needles, where, patterns)
            if patterns and isinstance(value, str) and value.strip():
                yield from _keyword_rules(str(key), value, where, f"{at}.{key}")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _walk_json(value, f"{at}[{i}]", needles, where, patterns)
    elif data is not None:
        yield from text_hits(str(data), needles, where, at)


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
