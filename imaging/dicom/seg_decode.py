"""Frames of a DICOM SEG as stored values: 1-bit RLE (PS3.5 Annex G) and deflate here, the rest by pydicom."""

from __future__ import annotations

from typing import Any

import numpy as np

from imaging.dicom.labels import LabelError

# DICOM SEG transfer syntaxes that no installed decoder reads: pydicom (and pylibjpeg, GDCM,
# DCMTK 3.6.7) decode RLE only for 8/16/32 bits allocated, and none knows Deflated Image
# Frame Compression (added to PS3.5 in 2024). Both are decoded here, frame by frame.
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
DEFLATED_IMAGE_FRAME = "1.2.840.10008.1.2.8.1"
_TS_NAMES = {RLE_LOSSLESS: "RLE Lossless", DEFLATED_IMAGE_FRAME: "Deflated Image Frame Compression"}


def seg_frames(ds: Any, file_ref: str) -> np.ndarray:
    """Every frame of a SEG as ``(n, rows, cols)`` stored values (0/1 for BINARY).

    Raises:
        LabelError: pixel data that cannot be decoded; the reason names the transfer syntax.
    """
    ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    n, rows, cols = int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)
    bits = int(ds.BitsAllocated)
    where = f"file {file_ref}: (7FE0,0010) PixelData in (0002,0010) TransferSyntaxUID = '{ts}' ({_ts_name(ts)})"
    try:
        if ts in (RLE_LOSSLESS, DEFLATED_IMAGE_FRAME) and (bits == 1 or ts == DEFLATED_IMAGE_FRAME):
            return np.stack([_native_frame(_decompress(f, ts), bits, rows, cols) for f in _encapsulated(ds, n)])
        frames = np.asarray(ds.pixel_array)
    except LabelError as exc:
        raise LabelError(f"{where}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the syntax is named; a decoder's text (paths) stays private
        raise LabelError(f"{where}: no decoder here reads it ({type(exc).__name__})") from exc
    return frames.reshape(n, rows, cols)


def _ts_name(ts: str) -> str:
    if ts in _TS_NAMES:
        return _TS_NAMES[ts]
    from pydicom.uid import UID

    return UID(ts).name if ts else "missing"


def _encapsulated(ds: Any, n: int) -> list[bytes]:
    from pydicom.encaps import generate_frames

    ext = ds.get("ExtendedOffsetTable")
    offsets = (ext, ds.get("ExtendedOffsetTableLengths")) if ext is not None else None
    frames = list(generate_frames(ds.PixelData, number_of_frames=n, extended_offsets=offsets))
    if len(frames) != n:
        raise LabelError(f"{len(frames)} encapsulated frames for (0028,0008) NumberOfFrames = {n}")
    return frames


def _decompress(frame: bytes, ts: str) -> bytes:
    if ts == DEFLATED_IMAGE_FRAME:
        import zlib

        # The standard says deflate (RFC 1951); some writers add the zlib wrapper (RFC 1950).
        for wbits in (-15, 15):
            try:
                unpacker = zlib.decompressobj(wbits)
                return unpacker.decompress(frame) + unpacker.flush()
            except zlib.error:
                continue
        raise LabelError("a frame is neither a deflate nor a zlib stream")
    # PS3.5 Annex G: a 64-byte header of segment offsets, then PackBits segments. pydicom's
    # PackBits routines are reused; its frame decoder assumes 8 bits or more per sample.
    from pydicom.pixels.decoders.rle import _rle_decode_segment, _rle_parse_header

    offsets = _rle_parse_header(frame[:64])
    if len(offsets) != 1:
        raise LabelError(f"{len(offsets)} RLE segments in a 1-bit frame (one expected)")
    return bytes(_rle_decode_segment(frame[offsets[0]:]))


def _native_frame(raw: bytes, bits: int, rows: int, cols: int) -> np.ndarray:
    """A decompressed frame in native layout: 1-bit pixels packed from the lowest bit, each frame from a byte."""
    n = rows * cols
    if bits == 1:
        if len(raw) < (n + 7) // 8:
            raise LabelError(f"a frame decodes to {len(raw)} bytes, {(n + 7) // 8} needed for {rows}x{cols} 1-bit pixels")
        return np.unpackbits(np.frombuffer(raw, np.uint8), count=n, bitorder="little").reshape(rows, cols)
    size = bits // 8
    if bits not in (8, 16) or len(raw) < n * size:
        raise LabelError(f"a frame decodes to {len(raw)} bytes for {rows}x{cols} pixels of {bits} bits")
    return np.frombuffer(raw, f"<u{size}", count=n).reshape(rows, cols)
