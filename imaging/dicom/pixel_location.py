"""Where a file's PixelData starts and how long it is, and whether the file is truncated or damaged
there: the index row keeps the offset so native pixels are later read straight from it."""

from __future__ import annotations

from typing import Any

from imaging.dicom.fastheader import IMPLICIT_LE
from imaging.dicom.syntax import DEFLATED_LE, EXPLICIT_BE

# Floating-point pixel elements (Parametric Maps, some vendors' derived maps), by their tag bytes.
FLOAT_ELEMENTS = {b"\xe0\x7f\x08\x00": "FloatPixelData", b"\xe0\x7f\x09\x00": "DoubleFloatPixelData"}
ELEMENT_TAGS = {"FloatPixelData": "(7FE0,0008)", "DoubleFloatPixelData": "(7FE0,0009)"}
_FLOAT_BE = {b"\x7f\xe0\x00\x08": "FloatPixelData", b"\x7f\xe0\x00\x09": "DoubleFloatPixelData"}


def pixel_location(fp: Any, rows: Any, ts: str | None, size: int,
                   sop_class: Any = None) -> tuple[int | None, int | None, str | None, str | None]:
    """(value offset, value length or -1 when encapsulated, truncation error, float element) of the
    pixel data at ``fp``; the last is ``FloatPixelData``/``DoubleFloatPixelData`` for floating-point
    pixels (7FE0,0008)/(7FE0,0009), ``None`` for (7FE0,0010) PixelData.

    A file that ends cleanly where PixelData would start has none: an error (truncated) for an
    image SOP class, the normal case for a non-image one (raw data, spectroscopy, a vendor's
    private class), whose row then has ``pixel_length`` 0.
    """
    if ts in (DEFLATED_LE, EXPLICIT_BE):
        # The file position means nothing for a deflated stream; big endian is too rare to bother
        # (but its float pixels must be known: their values are not integers).
        return None, None, None, _FLOAT_BE.get(fp.read(4)) if ts == EXPLICIT_BE else None
    start = fp.tell()
    head = fp.read(12)
    element = FLOAT_ELEMENTS.get(head[:4])
    if len(head) < 8 or (head[:4] != b"\xe0\x7f\x10\x00" and element is None):
        if not rows:
            return None, None, None, None
        if not needs_pixel_data(sop_class):
            return None, 0, None, None
        return None, None, f"truncated: no (7FE0,0010) PixelData before end of file ({size} bytes)", None
    implicit = ts == IMPLICIT_LE
    if implicit:
        offset, length = start + 8, int.from_bytes(head[4:8], "little")
    else:
        offset, length = start + 12, int.from_bytes(head[8:12], "little")
    if length == 0xFFFFFFFF:
        return offset, -1, _encapsulated_problem(fp, offset, size), element
    if offset + length > size:
        name = ELEMENT_TAGS.get(element or "", "(7FE0,0010)")
        return offset, length, (
            f"truncated: {name} {element or 'PixelData'} length {length} but only {size - offset} bytes in file"
        ), element
    return offset, length, None, element


def _encapsulated_problem(fp: Any, pos: int, size: int) -> str | None:
    """Why encapsulated PixelData whose items start at ``pos`` is damaged, or ``None``.

    Walks the item headers (each gives its length) to the sequence delimiter (FFFE,E0DD): what
    follows it is legal (DataSetTrailingPadding (FFFC,FFFC), digital signatures (FFFA,FFFA)), so
    the file's last bytes prove nothing; an item running past the end of the file is truncation.
    """
    while pos + 8 <= size:
        fp.seek(pos)
        head = fp.read(8)
        length = int.from_bytes(head[4:8], "little")
        if head[:4] == b"\xfe\xff\xdd\xe0":
            return None
        if head[:4] != b"\xfe\xff\x00\xe0" or length == 0xFFFFFFFF:
            group, elem = int.from_bytes(head[0:2], "little"), int.from_bytes(head[2:4], "little")
            return (f"damaged: encapsulated (7FE0,0010) PixelData has ({group:04X},{elem:04X}) at byte {pos} "
                    f"where an item (FFFE,E000) or the sequence delimiter (FFFE,E0DD) belongs")
        pos += 8 + length
    return (f"truncated: encapsulated (7FE0,0010) PixelData ends without its sequence delimiter "
            f"(FFFE,E0DD) ({size} bytes in file)")


# Standard SOP classes whose instances hold no PixelData (or keep their data elsewhere) although
# they may carry Rows: raw data, spectroscopy, encapsulated documents, RT plans and structures.
_NO_PIXEL_CLASSES = ("1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.4.2", "1.2.840.10008.5.1.4.1.1.104.",
                     "1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.88.",
                     "1.2.840.10008.5.1.4.1.1.9.")
_SEG_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")


def needs_pixel_data(sop_class: Any) -> bool:
    """Whether an instance of ``sop_class`` must hold PixelData (a standard image class, or unknown).

    A vendor's private class (a root other than 1.2.840.10008, e.g. Philips' 1.3.46.670589.11.0.0.12.*
    series data) may carry Rows without pixels: not an image, not damaged.
    """
    uid = str(sop_class or "")
    if not uid:
        return True
    if not uid.startswith("1.2.840.10008."):
        return False
    if uid in _SEG_CLASSES:
        return True
    return not any(uid == c or (c.endswith(".") and uid.startswith(c)) for c in _NO_PIXEL_CLASSES)
