"""The text a NIfTI-1/2 file carries outside its voxels, read with ``struct``.

Header text fields (``data_type``, ``db_name``, ``descrip``, ``aux_file``,
``intent_name``) and every header extension (code and bytes), read from the
stream: a ``.nii.gz`` is inflated only up to the end of its extensions, never
through the voxels. nibabel's header parser runs its consistency checks on every
load (~1-3 ms a file, most of the audit's time over a dataset of small volumes);
this reads the same bytes in ~0.1 ms, and a unit test compares both on the same
files. Either byte order; a header that is neither 348 nor 540 bytes is refused.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

# name -> (offset, length) of each text field, per header size (NIfTI-1: 348, NIfTI-2: 540).
TEXT_FIELDS: dict[int, dict[str, tuple[int, int]]] = {
    348: {"data_type": (4, 10), "db_name": (14, 18), "descrip": (148, 80), "aux_file": (228, 24),
          "intent_name": (328, 16)},
    540: {"descrip": (240, 80), "aux_file": (320, 24), "intent_name": (508, 16)},
}
# vox_offset: NIfTI-1 float32 at 108, NIfTI-2 int64 at 168.
VOX_OFFSET = {348: (108, "f"), 540: (168, "q")}
MAX_EXTENSIONS = 256 << 20  # a larger extension block is not plausible: stop there


@dataclass
class NiftiText:
    """Text fields (raw bytes, trailing NULs removed) and extensions ``(code, bytes)``."""

    fields: dict[str, bytes] = field(default_factory=dict)
    extensions: list[tuple[int, bytes]] = field(default_factory=list)


def _byte_order(first: bytes) -> tuple[str, int]:
    for order in "<>":
        size = struct.unpack(order + "i", first)[0]
        if size in TEXT_FIELDS:
            return order, size
    raise ValueError("not a NIfTI-1/2 header (sizeof_hdr is neither 348 nor 540)")


def read_nifti_text(fh: IO[bytes]) -> NiftiText:
    """Header text and extensions of the NIfTI stream ``fh`` (positioned at its start).

    Raises:
        ValueError: not a NIfTI-1/2 header, or a truncated one.
    """
    first = fh.read(4)
    if len(first) < 4:
        raise ValueError("not a NIfTI header (file too short)")
    order, size = _byte_order(first)
    header = first + fh.read(size - 4)
    if len(header) < size:
        raise ValueError("truncated NIfTI header")
    out = NiftiText()
    for name, (offset, length) in TEXT_FIELDS[size].items():
        out.fields[name] = header[offset : offset + length].rstrip(b"\x00")
    at, kind = VOX_OFFSET[size]
    vox_offset = int(struct.unpack_from(order + kind, header, at)[0])
    flag = fh.read(4)
    if len(flag) < 4 or flag[0] == 0:
        return out
    # Extensions run to vox_offset in a .nii; to the end of a .hdr (vox_offset 0 there).
    end = vox_offset if vox_offset > size + 4 else size + 4 + MAX_EXTENSIONS
    pos = size + 4
    while pos + 8 <= end:
        head = fh.read(8)
        if len(head) < 8:
            break
        esize, code = struct.unpack(order + "ii", head)
        if esize < 8 or pos + esize > end:
            break  # not a valid extension: the voxels (or garbage) begin here
        content = fh.read(esize - 8)
        out.extensions.append((code, content.rstrip(b"\x00")))
        pos += esize
    return out


def read_nifti_file(path: str | Path) -> NiftiText:
    """:func:`read_nifti_text` of a ``.nii``, ``.nii.gz`` or ``.hdr`` file (gzip by its magic).

    Raises:
        ValueError: not a NIfTI-1/2 header, or a truncated one.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gzipped else open(path, "rb") as fh:
        return read_nifti_text(fh)  # type: ignore[arg-type]
