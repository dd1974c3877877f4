"""Bits of pixel data that are not the pixel value: embedded overlays and unused high bits.

Old scanners (and some secondary captures) store overlay planes (annotations,
sometimes names) in the unused high bits of 16-bit pixels: ``(60xx,0102)
OverlayBitPosition`` names the bit, ``(60xx,0100) OverlayBitsAllocated`` is then
16 rather than 1. A viewer that honours the overlay shows the text; a reader that
ignores ``BitsStored`` (a NIfTI converter, ``np.frombuffer``) keeps the bits in
the voxel values. Hand-written because pydicom decodes overlays for display but
does not remove them from the pixel data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})


def embedded_overlays(ds: Dataset) -> list[int]:
    """Groups (``0x6000``...) whose overlay plane lives in the pixel data's high bits."""
    out = []
    for group in range(0x6000, 0x6020, 2):
        bits = ds.get((group, 0x0100))
        data = (group, 0x3000) in ds
        position = ds.get((group, 0x0102))
        if bits is None and position is None:
            continue
        if (bits is not None and int(bits.value or 1) != 1) or (not data and position is not None
                                                                  and int(position.value or 0) != 0):
            out.append(group)
    return out


def stored_mask(bits_stored: int, high_bit: int) -> int:
    """The bit mask of the stored value: bits ``high_bit - bits_stored + 1 .. high_bit``."""
    low = high_bit - bits_stored + 1
    return ((1 << bits_stored) - 1) << max(low, 0)


def clear_unused_bits(arr: np.ndarray, bits_stored: Any, high_bit: Any = None, signed: bool = False) -> np.ndarray:
    """Integer pixels with every bit outside the stored value cleared (signed: sign-extended).

    Pixel values read the DICOM way (masked to ``BitsStored``) are unchanged; only what
    hides above ``HighBit`` (overlay planes, garbage) goes. Non-integer or fully used
    words are returned as they are.
    """
    if bits_stored in (None, "") or arr.dtype.kind not in "iu":
        return arr
    nbits = arr.dtype.itemsize * 8
    stored = int(bits_stored)
    high = int(high_bit) if high_bit not in (None, "") else stored - 1
    if stored >= nbits or stored <= 0:
        return arr
    n = arr.dtype.itemsize
    native = arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
    work = native.view(np.dtype(f"u{n}"))  # bit pattern kept, no copy
    mask = np.array(stored_mask(stored, high), dtype=work.dtype)
    usual = high == stored - 1  # the stored field from bit 0: a range check says if anything is to clear
    if usual and _in_stored_range(work, stored, signed):
        return arr
    if not signed:
        if not usual and not np.any(work & ~mask):
            return arr
        return (work & mask).astype(arr.dtype)
    # Signed: keep the stored field and fill the bits above with its sign (two's complement).
    shift = nbits - 1 - high
    low = high - stored + 1
    lifted = (work << np.array(shift, dtype=work.dtype)).view(np.dtype(f"i{n}"))
    out = (lifted >> np.array(shift + low, dtype=lifted.dtype)) << np.array(low, dtype=lifted.dtype)
    if not usual and np.array_equal(out.view(work.dtype), work):
        return arr
    return out.view(work.dtype).astype(arr.dtype) if arr.dtype.kind == "u" else out.astype(arr.dtype)


def _in_stored_range(work: np.ndarray, stored: int, signed: bool) -> bool:
    """True when every word already is its stored value (HighBit = BitsStored - 1).

    One or two reductions instead of the masked temporaries below: a 300-slice CT
    (157 MB of pixels) is checked in ~10 ms rather than ~300 ms of page faults.
    """
    if work.size == 0:
        return True
    if not signed:
        return int(work.max()) < (1 << stored)
    values = work.view(np.dtype(f"i{work.dtype.itemsize}"))
    limit = 1 << (stored - 1)
    return int(values.min()) >= -limit and int(values.max()) < limit


def clean_pixel_data(ds: Dataset) -> str | None:
    """Remove embedded overlays and unused high bits from native pixel data, in place.

    Returns:
        None when done (or nothing to do); a reason when the pixels cannot be cleaned
        (an embedded overlay in compressed pixel data): the caller withholds the instance.
    """
    overlays = embedded_overlays(ds)
    if "PixelData" not in ds:
        return None
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    bits_alloc = int(ds.get("BitsAllocated", 0) or 0)
    bits_stored = int(ds.get("BitsStored", bits_alloc) or bits_alloc)
    if syntax and syntax not in NATIVE_SYNTAXES:
        return "embedded overlay in compressed pixel data" if overlays else None
    if bits_alloc not in (8, 16, 32) or (bits_stored >= bits_alloc and not overlays):
        return None
    order = ">" if syntax == "1.2.840.10008.1.2.2" else "<"
    raw = np.frombuffer(ds.PixelData, dtype=np.dtype(f"{order}u{bits_alloc // 8}"))
    cleaned = clear_unused_bits(raw, bits_stored, ds.get("HighBit"), signed=ds.get("PixelRepresentation") == 1)
    if cleaned is not raw:
        ds.PixelData = cleaned.astype(raw.dtype).tobytes()
    for group in overlays:  # the plane is gone from the pixels: its description goes too
        for tag in [elem.tag for elem in ds.group_dataset(group)]:
            del ds[tag]
    return None
