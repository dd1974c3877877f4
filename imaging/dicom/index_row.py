"""The ingest index row: one file's header as the scan stores it and the series builder reads it.

A ``TypedDict``, not a dataclass: rows are built by the header reader at ~0.12 ms a
file (issue 27) and written to SQLite as tuples in :data:`imaging.dicom.scan.COLUMNS`
order, so an object per row would cost on the hot path and a plain dict costs
nothing. ``total=False``: a non-DICOM or unreadable file's row holds only ``kind``
and ``error`` (its other columns read back from the index as ``None``: the types
below are those of a ``dicom`` row, the only kind the series builder reads), and
some readers select a few columns. Its keys are the index
schema's columns (``tests/unit/test_index_row.py`` holds them equal); the JSON
columns (:func:`imaging.dicom.scan.decode_row`) are typed as decoded.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, cast


class FrameInfo(TypedDict, total=False):
    """One frame of an enhanced (multi-frame) object: per-frame groups, shared groups as fallback."""

    ipp: list[float] | None
    iop: list[float] | None
    sp: list[float] | None  # PixelSpacing (row, column)
    thk: float | None  # SliceThickness
    slope: float | None
    intercept: float | None
    seg: int | None  # SEG: ReferencedSegmentNumber
    philips_ss: float | None  # the frame's own Philips scale slope (2005,140F) item
    t: dict[str, Any]  # dimension entries, as IndexRow.tkey
    row: SliceRow  # a mosaic tile's row (imaging.dicom.mosaic.mosaic_items), not from the index


class MosaicTiles(TypedDict):
    """Where a Siemens mosaic's tiles lie in the whole image (imaging.dicom.mosaic)."""

    n: int
    side: int  # tiles per side of the square
    rows: int  # the whole image's Rows
    cols: int  # the whole image's Columns


class IndexRow(TypedDict, total=False):
    """One file of the export (keys: :data:`imaging.dicom.scan.COLUMNS`)."""

    path: str  # absolute path in the export (PHI: private side only)
    size: int
    mtime: float
    kind: Literal["dicom", "dicomdir", "non_dicom", "unreadable"]
    error: str | None  # why the file is not usable (kind non_dicom/unreadable)
    sop_class: str | None
    sop_uid: str | None
    study_uid: str | None
    series_uid: str | None
    patient_id: str | None
    modality: str | None
    ts: str | None  # TransferSyntaxUID (or the one detected in a file without File Meta)
    rows: int | None
    cols: int | None
    n_frames: int  # NumberOfFrames, 1 when absent
    iop: list[float] | None
    ipp: list[float] | None
    spacing: list[float] | None  # PixelSpacing (row, column)
    image_type: list[str] | None
    instance_number: int | None
    tkey: dict[str, Any]  # what tells volumes apart at one position (imaging.dicom.dims): tpi, echo, b, comp...
    slope: float | None  # RescaleSlope
    intercept: float | None  # RescaleIntercept
    bits_alloc: int | None
    bits_stored: int | None
    pixel_rep: int | None  # PixelRepresentation: 1 signed
    samples: int | None  # SamplesPerPixel
    photometric: str | None
    pixel_offset: int | None  # byte offset of the pixel value (read later without parsing the file again)
    pixel_length: int | None  # its length; -1 encapsulated, 0 a class complete without PixelData
    frames: list[FrameInfo] | None  # enhanced objects: one item per frame
    params: dict[str, Any]  # acquisition parameters for the sidecar (no identifiers, dates, free text)
    ref_series_uid: str | None  # SEG: the first ReferencedSeriesSequence item's SeriesInstanceUID
    segments: list[list[Any]] | None  # SEG: [SegmentNumber, SegmentLabel] per segment
    high_bit: int | None
    padding: int | None  # PixelPaddingValue as the stored pixels hold it (signed per PixelRepresentation)
    padding_limit: int | None  # PixelPaddingRangeLimit, likewise
    for_uid: str | None  # FrameOfReferenceUID
    philips_ss: float | None  # Philips private scale slope (2005,100E) under its own creator
    rwvm: list[float] | None  # [slope, intercept] of the first RealWorldValueMappingSequence item
    policy: dict[str, str]  # the withholding rules' attributes (header.POLICY_TAGS) present in the file
    pixel_element: str | None  # the float pixel element (FloatPixelData...) instead of PixelData
    seen: int  # the scan generation that last saw the file (files gone since leave the index)


class SliceRow(IndexRow, total=False):
    """An index row as a slice carries it: a mosaic tile's row adds where its tiles lie."""

    mosaic: MosaicTiles | None


def slice_row(row: IndexRow) -> SliceRow:
    """``row`` as a slice's row: one without ``mosaic`` is one (a TypedDict may hide keys, so mypy asks)."""
    return cast(SliceRow, row)


def image_size(row: IndexRow) -> tuple[int, int]:
    """(Rows, Columns) of an image file's row.

    Raises:
        ValueError: either is missing (:func:`imaging.dicom.pixels.problem` refuses such a file first).
    """
    rows, cols = row.get("rows"), row.get("cols")
    if rows is None or cols is None:
        raise ValueError(f"missing (0028,0010) Rows = {rows!r} or (0028,0011) Columns = {cols!r}")
    return int(rows), int(cols)


__all__ = ["FrameInfo", "IndexRow", "MosaicTiles", "SliceRow", "image_size", "slice_row"]
