"""Stored pixel values of one file, the same whichever reader path runs.

Uncompressed little-endian pixels are read straight from the offset the scan
recorded; everything else is decoded by pydicom (with its pylibjpeg / pyjpegls
/ gdcm plugins). Both paths give the *stored values* of PS3.5 8.1.1: bits above
BitsStored are not part of the value (scanners leave overlay or junk bits
there), so the fast path masks them off (unsigned) or sign-extends bit
``HighBit`` (signed), which is what pydicom's decoders do; a test compares the
two on the same files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from imaging.dicom.index_row import IndexRow, SliceRow, image_size
from imaging.dicom.mosaic import unmosaic
from imaging.dicom.syntax import is_native, read_dataset, ts_name


class VolumeError(ValueError):
    """Pixels that cannot be assembled into a correct volume (message names file and tag)."""


@dataclass(frozen=True)
class PixelFormat:
    """How one file stores its pixels (from its index row)."""

    rows: int
    cols: int
    n_frames: int
    bits_alloc: int
    bits_stored: int
    signed: bool
    ts: str | None
    offset: int | None
    length: int | None
    padding: int | None = None  # PixelPaddingValue (stored value)
    padding_limit: int | None = None  # PixelPaddingRangeLimit (stored value)
    floating: bool = False  # (7FE0,0008) FloatPixelData / (7FE0,0009) DoubleFloatPixelData

    @classmethod
    def of(cls, row: SliceRow) -> PixelFormat:
        element = row.get("pixel_element")
        alloc = int(row.get("bits_alloc") or FLOAT_BITS.get(str(element)) or 0)
        stored = row.get("bits_stored")
        rows, cols = image_size(row)
        return cls(
            rows=rows, cols=cols, n_frames=int(row.get("n_frames") or 1),
            bits_alloc=alloc, bits_stored=int(stored) if stored and not element else alloc,
            signed=row.get("pixel_rep") == 1 or bool(element),
            ts=row.get("ts"), offset=row.get("pixel_offset"), length=row.get("pixel_length"),
            padding=row.get("padding"), padding_limit=row.get("padding_limit"), floating=bool(element),
        )

    @property
    def dtype(self) -> np.dtype[Any]:
        if self.floating:
            return np.dtype(f"<f{self.bits_alloc // 8}")
        return np.dtype(f"<{'i' if self.signed else 'u'}{self.bits_alloc // 8}")

    @property
    def stored_range(self) -> tuple[int, int]:
        """Lowest and highest stored value this format can hold (PS3.5 8.1.1)."""
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1

    @property
    def native(self) -> bool:
        """Readable straight from the file at the recorded offset."""
        return is_native(self.ts) and bool(self.offset) and self.bits_alloc in ((32, 64) if self.floating else (8, 16, 32))

    def padding_mask(self, stored: np.ndarray) -> np.ndarray | None:
        """Where ``stored`` holds padding (PixelPaddingValue, or the range up to PixelPaddingRangeLimit)."""
        if self.padding is None:
            return None
        if self.padding_limit is None:
            return stored == self.padding
        lo, hi = sorted((self.padding, self.padding_limit))
        return (stored >= lo) & (stored <= hi)


# BitsAllocated of the floating-point pixel elements (PS3.3 C.7.6.24: 32 and 64, the only values).
FLOAT_BITS = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}


def problem(row: IndexRow) -> str | None:
    """Why this file's pixels cannot be read as stored values, or ``None``."""
    alloc, stored, high = row.get("bits_alloc"), row.get("bits_stored"), row.get("high_bit")
    element = row.get("pixel_element")
    if element:  # floating-point pixels: no BitsStored/HighBit/PixelRepresentation; the element fixes the size
        if alloc not in (None, FLOAT_BITS[element]):
            return f"invalid (0028,0100) BitsAllocated = {alloc} with {element} (must be {FLOAT_BITS[element]})"
        return None
    if alloc is None:  # an image SOP class without its pixel description: say what is missing
        what = "" if row.get("rows") else " and (0028,0010) Rows"
        return f"missing (0028,0100) BitsAllocated{what}: no pixel description at the top level of the file"
    if alloc not in (8, 16, 32):
        return f"unsupported (0028,0100) BitsAllocated = {alloc}"
    if not row.get("rows") or not row.get("cols"):  # (the series builder needs the image size)
        return f"missing (0028,0010) Rows = {row.get('rows')!r} or (0028,0011) Columns = {row.get('cols')!r}"
    if stored is not None and not 1 <= int(stored) <= int(alloc):
        return f"invalid (0028,0101) BitsStored = {stored} with (0028,0100) BitsAllocated = {alloc}"
    if high is not None and stored is not None and int(high) != int(stored) - 1:
        # CT and MR IODs require HighBit = BitsStored - 1; pydicom's decoders assume it too.
        return f"unsupported (0028,0102) HighBit = {high} with (0028,0101) BitsStored = {stored}"
    return None


def to_stored(arr: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """Mask (unsigned) or sign-extend (signed) ``arr`` in place to BitsStored; returns it."""
    bits = fmt.bits_stored
    if bits >= fmt.bits_alloc:
        return arr
    u = arr.view(np.dtype(f"<u{fmt.bits_alloc // 8}"))
    u &= u.dtype.type((1 << bits) - 1)
    if fmt.signed:
        # Two's complement of a `bits`-wide value in the full width: (v ^ s) - s, s = sign bit
        # (unsigned arithmetic wraps exactly as needed).
        sign = u.dtype.type(1 << (bits - 1))
        u ^= sign
        u -= sign
    return arr


# Integer types a volume's stored values are held in, smallest first.
_HOLDERS = [np.dtype(t) for t in ("<u1", "<i1", "<u2", "<i2", "<u4", "<i4", "<i8")]


def common_dtype(fmts: Iterable[PixelFormat]) -> np.dtype[Any]:
    """The type that holds the stored values of every format: their own type when all agree,
    else the smallest integer type covering every format's range (u12 beside s16: int16)."""
    items = list(fmts)
    types = {f.dtype for f in items}
    if len(types) == 1:
        return types.pop()
    if any(f.floating for f in items):  # float beside another format: float64 holds every value
        return np.dtype("<f8")
    lo = min(f.stored_range[0] for f in items)
    hi = max(f.stored_range[1] for f in items)
    return next(t for t in _HOLDERS if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)


def read_native_into(dest: np.ndarray, path: str, fmt: PixelFormat, frame: int) -> bool:
    """Read one uncompressed frame straight into ``dest`` as stored values; False when not possible.

    ``dest`` may be signed where the file is unsigned with unused high bits (12 of 16): its
    stored values, masked in the file's own type, are the same numbers read as signed.
    """
    same = dest.dtype == fmt.dtype or (dest.dtype.itemsize == fmt.dtype.itemsize and dest.dtype.kind == "i"
                                        and not fmt.signed and fmt.bits_stored < fmt.bits_alloc)
    if not (fmt.native and same and dest.shape == (fmt.rows, fmt.cols)
            and (fmt.length or 0) >= dest.nbytes * fmt.n_frames):
        return False
    with open(path, "rb") as fh:
        fh.seek(int(fmt.offset or 0) + frame * dest.nbytes)
        if fh.readinto(dest.data.cast("B")) != dest.nbytes:
            return False
    to_stored(dest.view(fmt.dtype), fmt)
    return True


def read_file_frames(path: str, row: SliceRow, file_ref: str) -> np.ndarray:
    """All stored frames of one file as ``(frames, rows, cols)`` stored values (no rescale).

    Args:
        path: the file.
        row: its index row.
        file_ref: how errors name the file: its key (``file-<key>``), never its path (dataset-side text).

    Raises:
        VolumeError: truncated, undecodable or wrongly sized pixel data, naming ``file_ref``; a
            decoder's own text only as the exception's cause (it may hold the path).
    """
    m = row.get("mosaic")
    if m:  # Siemens mosaic: read the whole image, return its tiles as frames
        whole = read_file_frames(path, {**row, "rows": m["rows"], "cols": m["cols"], "n_frames": 1, "mosaic": None},
                                 file_ref)
        return unmosaic(whole[0], m)
    fmt = PixelFormat.of(row)
    if fmt.native:
        count = fmt.rows * fmt.cols * fmt.n_frames
        if (fmt.length or 0) < count * fmt.dtype.itemsize:
            raise VolumeError(f"file {file_ref}: (7FE0,0010) PixelData length {fmt.length} < "
                              f"{count * fmt.dtype.itemsize} for (0028,0010) Rows={fmt.rows} "
                              f"(0028,0011) Columns={fmt.cols}")
        arr = np.fromfile(path, dtype=fmt.dtype, count=count, offset=int(fmt.offset or 0))
        if arr.size != count:
            raise VolumeError(f"file {file_ref}: truncated (7FE0,0010) PixelData")
        return to_stored(arr, fmt).reshape(fmt.n_frames, fmt.rows, fmt.cols)
    try:  # compressed, big endian, deflated or bare: pydicom decodes (and masks to BitsStored)
        arr = read_dataset(path).pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's error row
        raise VolumeError(
            f"file {file_ref}: cannot decode (7FE0,0010) PixelData with (0002,0010) TransferSyntaxUID = "
            f"'{fmt.ts}' ({ts_name(fmt.ts)}): {type(exc).__name__}"
        ) from exc
    arr = arr.reshape(fmt.n_frames, fmt.rows, fmt.cols)
    if (arr.dtype.kind == "f") != fmt.floating:  # never cast floats into integers (or the reverse) unseen
        raise VolumeError(f"file {file_ref}: decoded pixel type {arr.dtype} does not match the header's "
                          f"{'floating-point' if fmt.floating else 'integer'} pixel data")
    if arr.dtype.kind in "iu" and arr.dtype.itemsize * 8 == fmt.bits_alloc and fmt.bits_stored < fmt.bits_alloc:
        # Whatever a decoder plugin leaves above BitsStored goes here, by this file's own format.
        # (the decoded array is this call's own: masked in place unless it must change byte order)
        arr = to_stored(arr.astype(arr.dtype.newbyteorder("<"), copy=False), fmt)
    return arr
