"""The fast header reader, replaying the element layout of a file read before.

The slices of one series repeat the same elements in the same order: a Philips MR header has
~480 of them, and walking them one by one in Python is most of a scan (~180 us a file).
After a full walk (:func:`imaging.dicom.fastheader.read_fast`), the layout is kept: where each
element header is, which are wanted, and the bytes that decided the walk. The next file is
checked against it in one NumPy comparison of those bytes; the wanted values are then
decoded at their known places.

Why the result is the full walk's: the walk decides only from element headers (tag, VR,
length), from the whole content of what it looks into (undefined-length sequences, the Real
World Value Mapping, the character set) and from the wanted values it decodes. The layout
compares all of those bytes but a plain element's length; where only such a length differs,
everything after it is compared again shifted by the difference. Anything else (another tag,
another VR, a sequence's content, a decoding error, too many shifts, a buffer too short)
falls back to the full walk, as does every file when layouts do not repeat.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from imaging.dicom.fastheader import (
    _EXPLICIT_HEAD_S,
    _IMPLICIT_HEAD_S,
    _LONG_VR_CODES,
    _S_CHARSET,
    _S_PIXEL_DATA,
    _S_RWVM,
    _S_SPECIAL,
    _SHORT_VR_CODES,
    _U16,
    _U32,
    _UN_CODE,
    IMPLICIT_LE,
    RWVM_KEYWORD,
    WANTED,
    NeedMore,
    _Bail,
    _decode,
    _skip_undefined,
    _swapped,
    file_meta,
    read_fast,
)

# Length differences replayed per file before the full walk is cheaper.
MAX_SHIFTS = 8
# Layouts kept per process (most recent first), and how many are tried per file.
KEEP = 4
# Build layouts only while they pay: at most this many more built than files they served
# (and one every REBUILD_EVERY misses, should layouts start repeating later in an export).
MAX_UNUSED = 8
REBUILD_EVERY = 64


@dataclass
class _Layout:
    ts: str
    idx: np.ndarray  # positions (from the dataset start) of the bytes that decided the walk
    expected: np.ndarray  # those bytes (uint8)
    owner: np.ndarray  # for each position: its record (-1: compared whole, never shifted)
    records: list[tuple[int, int, int, int, int]]  # (first idx entry, end entry, length offset, size, length)
    # (record or -1: compared whole, keyword, kind, encoding, header size, the template's value bytes,
    # value and value length): an unchanged value is not decoded again
    wanted: list[tuple[int, str, str, str, int, bytes, Any, int]]
    value_heads: np.ndarray  # idx entry of each wanted element's first header byte (0 when compared whole)
    pixel_entry: int  # idx entry of the PixelData element's first byte


_LAYOUTS: list[_Layout] = []
_STATS = {"built": 0, "served": 0, "missed": 0}


def read_fast_replayed(buf: bytes, complete: bool = True) -> tuple[dict[str, Any], str, int | None] | None:
    """:func:`imaging.dicom.fastheader.read_fast`, by a known layout when one fits (same result).

    Raises:
        NeedMore: ``buf`` is a prefix that ends before the pixel data.
    """
    try:
        meta = file_meta(buf)
    except (struct.error, UnicodeDecodeError, ValueError):
        meta = None
    if meta is not None:
        for layout in _LAYOUTS[:2]:
            if layout.ts == meta[1]:
                found = _replay(layout, buf, meta[0])
                if found is not None:
                    _STATS["served"] += 1
                    return found
    result = read_fast(buf, complete)
    _STATS["missed"] += 1
    if meta is not None and result is not None and result[2] is not None and (
            _STATS["built"] - _STATS["served"] < MAX_UNUSED or _STATS["missed"] % REBUILD_EVERY == 0):
        built = _build(buf, meta[0], meta[1], result[0].get(RWVM_KEYWORD))
        # Kept only when it reproduces the full walk on the file it came from.
        if built is not None and _replay(built, buf, meta[0]) == result:
            _STATS["built"] += 1
            _LAYOUTS.insert(0, built)
            del _LAYOUTS[KEEP:]
    return result


def forget() -> None:
    """Drop the layouts kept (tests; a process reading unrelated exports one after another)."""
    _LAYOUTS.clear()
    _STATS.update(built=0, served=0, missed=0)


def served() -> int:
    """How many headers a kept layout read since :func:`forget` (the rest: the full walk)."""
    return _STATS["served"]


def _replay(layout: _Layout, buf: bytes, start: int) -> tuple[dict[str, Any], str, int] | None:
    """The full walk's result from ``layout`` on ``buf`` (dataset at ``start``), or ``None``."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    n = len(arr)
    pos = layout.idx + start
    lengths: dict[int, int] = {}
    k0 = 0
    for _ in range(MAX_SHIFTS + 1):
        if pos[-1] >= n:
            return None
        same = arr[pos[k0:]] == layout.expected[k0:]
        if same.all():
            break
        k = k0 + int(same.argmin())  # the first byte that differs
        r = int(layout.owner[k])
        if r < 0:
            return None
        first, end, len_off, len_size, old = layout.records[r]
        if k < first + len_off:  # the tag or VR differs (bytes before k were equal)
            return None
        at = int(pos[first]) + len_off
        new = _U16.unpack_from(buf, at)[0] if len_size == 2 else _U32.unpack_from(buf, at)[0]
        if new == 0xFFFFFFFF:
            return None
        lengths[r] = new
        pos[end:] += new - old  # (pos is this call's own array)
        k0 = end
    else:
        return None
    out: dict[str, Any] = {}
    heads = pos[layout.value_heads].tolist()  # one conversion, not a NumPy scalar per value
    for (r, keyword, kind, encoding, hdr, raw, known, old), head in zip(layout.wanted, heads, strict=True):
        if r < 0:
            value = list(known) if isinstance(known, list) else known
        else:
            value_at = head + hdr
            value_end = value_at + (lengths.get(r, old) if lengths else old)
            if value_end > n:
                return None
            data = buf[value_at:value_end]
            if data == raw:  # the template's bytes: its value (lists copied, never shared)
                value = list(known) if isinstance(known, list) else known
            else:
                try:
                    value = _decode(data, kind, encoding)
                except (_Bail, UnicodeDecodeError, ValueError, struct.error):
                    return None
        if value is not None:
            out[keyword] = value
    return out, layout.ts, int(pos[layout.pixel_entry])


def _build(buf: bytes, start: int, ts: str, rwvm: Any) -> _Layout | None:
    """The layout of ``buf``'s top-level walk from ``start`` to PixelData (``None``: not a case);
    ``rwvm``: the full walk's mapping value, a function of the mapping's bytes (compared whole)."""
    explicit = ts != IMPLICIT_LE
    table = {_swapped(t): v for t, v in WANTED.items()}
    n = len(buf)
    idx: list[np.ndarray] = []
    owner: list[np.ndarray] = []
    records: list[tuple[int, int, int, int, int]] = []
    wanted: list[tuple[int, str, str, str, int, bytes, Any, int]] = []
    heads: list[int] = []
    count, pos, encoding = 0, start, "latin-1"

    def keep(a: int, b: int, record: int) -> None:
        nonlocal count
        idx.append(np.arange(a - start, b - start, dtype=np.int64))
        owner.append(np.full(b - a, record, dtype=np.int64))
        count += b - a

    try:
        while pos + 12 <= n:
            if explicit:
                stag, vr, length = _EXPLICIT_HEAD_S.unpack_from(buf, pos)
                if stag & 0xFFFF == 0xFFFE:
                    return None
                if vr in _SHORT_VR_CODES:
                    hdr, len_off, len_size = 8, 6, 2
                elif vr in _LONG_VR_CODES:
                    length, hdr, len_off, len_size = _U32.unpack_from(buf, pos + 8)[0], 12, 8, 4
                else:
                    return None
            else:
                stag, length = _IMPLICIT_HEAD_S.unpack_from(buf, pos)
                vr, hdr, len_off, len_size = 0, 8, 4, 4
            if stag == _S_PIXEL_DATA:  # its header only: the pixels differ from file to file
                pixel_entry = count
                keep(pos, pos + hdr, -1)
                break
            if stag in _S_SPECIAL and stag != _S_RWVM:
                return None
            if length == 0xFFFFFFFF:  # walked into by the full walk: compared whole
                end = _skip_undefined(buf, pos + hdr, explicit and vr != _UN_CODE)
                whole = True
            else:
                end = pos + hdr + length
                whole = stag in (_S_RWVM, _S_CHARSET)
            if end > n:
                return None
            if whole:
                keep(pos, end, -1)
                if stag == _S_RWVM:
                    wanted.append((-1, RWVM_KEYWORD, "", "", 0, b"", rwvm, 0))
                    heads.append(0)
            else:
                first = count
                keep(pos, pos + hdr, len(records))
                records.append((first, count, len_off, len_size, length))
            if stag in table and length != 0xFFFFFFFF:  # (the full walk skips an undefined length)
                keyword, kind = table[stag]
                raw = buf[pos + hdr:end]
                value = _decode(raw, kind, encoding)
                wanted.append((-1 if whole else len(records) - 1, keyword, kind, encoding, hdr, raw, value, length))
                heads.append(0 if whole else records[-1][0])
                if stag == _S_CHARSET:
                    encoding = {"ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}.get(
                        value if isinstance(value, str) else "", "latin-1")
            pos = end
        else:
            return None
    except (NeedMore, _Bail, struct.error, UnicodeDecodeError, ValueError):
        return None
    at = np.concatenate(idx)
    return _Layout(ts=ts, idx=at,
                   expected=np.frombuffer(buf, dtype=np.uint8)[at + start].copy(), owner=np.concatenate(owner),
                   records=records, wanted=wanted, value_heads=np.asarray(heads, dtype=np.int64),
                   pixel_entry=pixel_entry)
