"""Read one file's DICOM header (never its pixels) into a flat index row.

Used by :mod:`imaging.dicom.scan` in worker processes. Besides the attributes
that group and place slices, the row records where the pixel data starts and
how long it is, so uncompressed pixels can later be read straight from that
offset without parsing the file again, and a truncated file is caught here.
"""

from __future__ import annotations

import os
import struct
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from imaging.dicom.dims import EXTRA_WANTED, PRIVATE_KEYWORDS, header_dims, private_getter
from imaging.dicom.enhanced import frame_dims, frame_scale_slope
from imaging.dicom.fastheader import RWVM_KEYWORD, NeedMore
from imaging.dicom.fastlayout import read_fast_replayed as read_fast
from imaging.dicom.index_row import FrameInfo, IndexRow
from imaging.dicom.pixel_location import pixel_location
from imaging.dicom.syntax import bare_transfer_syntax

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
# Per-instance attributes of the withholding rules (imaging.deid.withhold): every file's own
# values are indexed, so one instance with burned-in text withholds its series.
POLICY_TAGS = ("BurnedInAnnotation", "RecognizableVisualFeatures", "SeriesDescription")
# Only these attributes are parsed (pydicom seeks over everything else).
HEADER_TAGS: list[str | int] = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID",
    "Modality", "ImageType", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "PlanarConfiguration",
    "RescaleSlope", "RescaleIntercept", "TemporalPositionIdentifier", "TriggerTime",
    "EchoNumbers", "EchoTime", "AcquisitionNumber", "DiffusionBValue", "InstanceNumber",
    "SeriesNumber", "SliceThickness", "SpacingBetweenSlices", "GantryDetectorTilt",
    "PatientPosition", "BodyPartExamined", "Manufacturer", "ManufacturerModelName",
    "MagneticFieldStrength", "RepetitionTime", "FlipAngle", "InversionTime", "KVP",
    "ConvolutionKernel", "XRayTubeCurrent", "ScanningSequence", "SequenceVariant",
    "MRAcquisitionType", "ImagingFrequency", "EchoTrainLength", "PixelBandwidth",
    "PatientAge", "PatientSex", "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence", "ReferencedSeriesSequence", "SegmentSequence",
    "SegmentationType", "DimensionIndexSequence", "HighBit", "PixelPaddingValue", "PixelPaddingRangeLimit",
    "FrameOfReferenceUID", "RealWorldValueMappingSequence", 0x20050010, 0x2005100E, "PixelData",
    *POLICY_TAGS,
]
# Dimension attributes (diffusion, vendor private tags, CSA), by tag: see imaging.dicom.dims.
HEADER_TAG_NUMBERS: list[int | str] = [*HEADER_TAGS, *EXTRA_WANTED]
# Private attributes read by tag (the fast reader's pseudo-keywords).
PRIVATE_TAGS = {"PhilipsCreator": 0x20050010, "PhilipsScaleSlope": 0x2005100E}
PHILIPS_CREATOR = "Philips MR Imaging DD 001"
# Acquisition parameters for the JSON sidecar (no identifiers, dates or free text).
PARAM_KEYWORDS = [
    "Modality", "Manufacturer", "ManufacturerModelName", "MagneticFieldStrength",
    "RepetitionTime", "EchoTime", "FlipAngle", "InversionTime", "KVP", "ConvolutionKernel",
    "XRayTubeCurrent", "SliceThickness", "SpacingBetweenSlices", "PatientPosition",
    "BodyPartExamined", "ImageType", "ScanningSequence", "SequenceVariant", "MRAcquisitionType",
    "ImagingFrequency", "EchoTrainLength", "PixelBandwidth", "GantryDetectorTilt",
    "PhotometricInterpretation", "SeriesNumber", "PatientAge", "PatientSex",
    "InPlanePhaseEncodingDirection",
]


def _plain(value: Any) -> Any:
    """A JSON-able version of a pydicom value."""
    if value is None or isinstance(value, (str, int, float, bool)):
        if isinstance(value, float):
            return float(value)
        if isinstance(value, int):
            return int(value)
        return str(value) if isinstance(value, str) else value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return None
    try:
        return float(value) if "." in str(value) or "e" in str(value).lower() else int(value)
    except (TypeError, ValueError):
        return str(value)


def _get(ds: Dataset, keyword: str) -> Any:
    if keyword in PRIVATE_TAGS:
        elem = ds.get(PRIVATE_TAGS[keyword])
        value = None if elem is None else elem.value
        if isinstance(value, bytes):  # implicit VR: pydicom may leave a private value undecoded
            value = struct.unpack("<f", value)[0] if len(value) == 4 else value.decode("latin-1").rstrip(" \x00")
    else:
        value = ds.get(keyword)
    if value is None or value == "":
        return None
    return _plain(value)


def _first(ds: Dataset | None, seq: str) -> Dataset | None:
    if ds is None:
        return None
    items = ds.get(seq)
    return items[0] if items else None


def _frame_info(frame: Dataset | None, shared: Dataset | None) -> FrameInfo:
    """Geometry, timing and rescale of one enhanced frame (per-frame groups, shared fallback)."""

    def pick(seq: str, keyword: str) -> Any:
        for group in (frame, shared):
            item = _first(group, seq)
            if item is not None and keyword in item:
                return _get(item, keyword)
        return None

    info: FrameInfo = {
        "ipp": pick("PlanePositionSequence", "ImagePositionPatient"),
        "iop": pick("PlaneOrientationSequence", "ImageOrientationPatient"),
        "sp": pick("PixelMeasuresSequence", "PixelSpacing"),
        "thk": pick("PixelMeasuresSequence", "SliceThickness"),
        "slope": pick("PixelValueTransformationSequence", "RescaleSlope"),
        "intercept": pick("PixelValueTransformationSequence", "RescaleIntercept"),
        "seg": pick("SegmentIdentificationSequence", "ReferencedSegmentNumber"),
        "philips_ss": frame_scale_slope(frame),
    }
    t = {
        "tpi": pick("FrameContentSequence", "TemporalPositionIndex"),
        "stack": pick("FrameContentSequence", "StackID"),
        "te": pick("MREchoSequence", "EffectiveEchoTime"),
        "b": pick("MRDiffusionSequence", "DiffusionBValue"),
        "trig": pick("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"),
    }
    diffusion = _first(frame, "MRDiffusionSequence") or _first(shared, "MRDiffusionSequence")
    direction = _first(diffusion, "DiffusionGradientDirectionSequence")
    if direction is not None and "DiffusionGradientOrientation" in direction:
        t["bvec"] = _get(direction, "DiffusionGradientOrientation")
    component = pick("MRImageFrameTypeSequence", "ComplexImageComponent")
    if component:
        t["comp"] = {"MAGNITUDE": "M", "PHASE": "P", "REAL": "R", "IMAGINARY": "I"}.get(str(component).upper())
    info["t"] = {k: v for k, v in t.items() if v is not None} | frame_dims(frame)
    return info


# Headers are a few kB: read that much first (not whole 512 kB CT slices, read again for pixels).
FIRST_READ_BYTES = 1 << 14
FAST_READ_BYTES = 1 << 20


def header_row(path: str) -> IndexRow:
    """The index row of one file: ``kind`` is dicom, dicomdir, non_dicom or unreadable."""
    return read_header(path)[0]


def read_header(path: str) -> tuple[IndexRow, bool]:
    """(:func:`header_row`, whether the fast reader read it): the scan counts the fast path."""
    row: IndexRow = {"kind": "non_dicom"}
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            buf = fp.read(min(size, FIRST_READ_BYTES))
            if buf[128:132] != b"DICM" and buf[:2] not in (b"\x08\x00", b"\x02\x00", b"\x00\x08"):
                row["error"] = "no DICM preamble"
                return row, False
            fast = _read_fast_growing(fp, buf, size)
            # (a prefix ending before the pixel data never comes back: NeedMore grew it)
            if fast is not None and ("SOPClassUID" in fast[0] or "SeriesInstanceUID" in fast[0]):
                attrs, ts, pixel_pos = fast
                fp.seek(pixel_pos if pixel_pos is not None else size)
                location = pixel_location(fp, attrs.get("Rows"), ts, size, attrs.get("SOPClassUID"))
                return _fill(row, attrs.get, ts, location, None), True
            fp.seek(0)
            import pydicom  # only for files the fast reader leaves (enhanced, SEG, unusual encodings)

            with warnings.catch_warnings():
                # pydicom warns with absolute paths; problems surface as this row's error instead.
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_specific_tags(), force=True)
            meta = getattr(ds, "file_meta", None)
            ts_value = meta.get("TransferSyntaxUID") if meta is not None else None
            # A bare file (no File Meta): the syntax pydicom detected, as deid does.
            ts_str = str(ts_value) if ts_value else bare_transfer_syntax(ds)
            location = pixel_location(fp, ds.get("Rows"), ts_str, size, ds.get("SOPClassUID"))
    except Exception as exc:  # noqa: BLE001 - any parse failure makes the file unreadable, never fatal
        return _unreadable(exc), False
    media_class = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    if media_class == DICOMDIR_CLASS:
        row["kind"] = "dicomdir"
        return row, False
    if "SeriesInstanceUID" not in ds and "SOPClassUID" not in ds:
        row["error"] = "no (0008,0016) SOPClassUID or (0020,000E) SeriesInstanceUID"
        if buf[128:132] == b"DICM":  # claims to be DICOM: damaged, not foreign
            row["kind"] = "unreadable"
            row["error"] = f"DICM preamble but {row['error']} (damaged file?)"
        return row, False
    try:
        return _fill(row, lambda kw: _get(ds, kw), ts_str, location, ds), False
    except Exception as exc:  # noqa: BLE001 - a value pydicom leaves raw (IS '1A', badVR.dcm) raised out of the scan
        return _unreadable(exc), False


def _unreadable(exc: Exception) -> IndexRow:
    return {"kind": "unreadable", "error": f"unreadable: {type(exc).__name__}: {str(exc)[:160]}"}


def fast_attributes(path: str) -> dict[str, Any] | None:
    """The fast reader's attributes of one file (keyword -> value), or ``None`` where it
    leaves the file to pydicom (enhanced, unusual encodings, damaged)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            fast = _read_fast_growing(fp, fp.read(min(size, FIRST_READ_BYTES)), size)
    except (OSError, ValueError):
        return None
    return fast[0] if fast is not None else None


@lru_cache(maxsize=1)
def _specific_tags() -> list[BaseTag]:
    from pydicom.tag import Tag

    return [Tag(t) for t in HEADER_TAG_NUMBERS]


def _read_fast_growing(fp: Any, buf: bytes, size: int) -> Any:
    """The fast reader on a growing prefix of the file; ``None`` sends the file to pydicom.

    (``read_fast`` replays the layout of a file read before where one fits: the full walk's result.)
    """
    while True:
        try:
            return read_fast(buf, complete=len(buf) >= size)
        except NeedMore:
            if len(buf) >= FAST_READ_BYTES:
                return None
            fp.seek(0)
            buf = fp.read(min(size, 8 * len(buf)))


def _fill(row: IndexRow, get: Any, ts: str | None, location: tuple[Any, Any, Any, Any],
          ds: Dataset | None) -> IndexRow:
    """Fill an index row from ``get(keyword)`` (a plain value); ``ds`` adds sequences (pydicom path)."""
    offset, length, truncated, row["pixel_element"] = location
    row["kind"] = "dicom"
    if truncated:
        row["kind"], row["error"] = "unreadable", truncated
    row["ts"] = ts
    # The copy loops name columns by variable, which a TypedDict cannot check: the same dict, untyped.
    flat = cast("dict[str, Any]", row)
    for col, kw in (
        ("sop_class", "SOPClassUID"), ("sop_uid", "SOPInstanceUID"), ("study_uid", "StudyInstanceUID"),
        ("series_uid", "SeriesInstanceUID"), ("patient_id", "PatientID"), ("modality", "Modality"),
        ("rows", "Rows"), ("cols", "Columns"), ("iop", "ImageOrientationPatient"),
        ("ipp", "ImagePositionPatient"), ("spacing", "PixelSpacing"), ("image_type", "ImageType"),
        ("instance_number", "InstanceNumber"), ("slope", "RescaleSlope"),
        ("intercept", "RescaleIntercept"), ("bits_alloc", "BitsAllocated"),
        ("bits_stored", "BitsStored"), ("pixel_rep", "PixelRepresentation"),
        ("samples", "SamplesPerPixel"), ("photometric", "PhotometricInterpretation"),
        ("high_bit", "HighBit"), ("for_uid", "FrameOfReferenceUID"),
    ):
        flat[col] = get(kw)
    for col, kw in (("padding", "PixelPaddingValue"), ("padding_limit", "PixelPaddingRangeLimit")):
        flat[col] = _as_stored(get(kw), row["bits_alloc"], row["pixel_rep"])
    policy = {kw: get(kw) for kw in POLICY_TAGS}
    row["policy"] = {k: str(v) for k, v in policy.items() if v not in (None, "")}
    scale = get("PhilipsScaleSlope") if get("PhilipsCreator") == PHILIPS_CREATOR else None
    row["philips_ss"] = float(scale) if isinstance(scale, (int, float)) and scale else None
    if isinstance(row["image_type"], str):
        row["image_type"] = [row["image_type"]]
    for col in ("sop_class", "sop_uid", "study_uid", "series_uid", "patient_id", "for_uid"):
        if flat[col] is not None:
            flat[col] = str(flat[col])
    row["n_frames"] = int(get("NumberOfFrames") or 1)
    row["pixel_offset"], row["pixel_length"] = offset, length
    tkey = {
        "tpi": get("TemporalPositionIdentifier"), "trig": get("TriggerTime"),
        "echo": get("EchoNumbers"), "te": get("EchoTime"),
        "acq": get("AcquisitionNumber"), "b": get("DiffusionBValue"),
    }
    row["tkey"] = {k: v for k, v in tkey.items() if v is not None}
    if ds is not None:
        extra = private_getter(ds)
        row["tkey"].update(header_dims(lambda kw: extra(kw) if kw in PRIVATE_KEYWORDS else get(kw)))
    else:
        row["tkey"].update(header_dims(get))
    params = {kw: get(kw) for kw in PARAM_KEYWORDS}
    row["params"] = {k: v for k, v in params.items() if v is not None}
    if row["ts"]:
        row["params"]["TransferSyntaxUID"] = row["ts"]
    if ds is None:
        mapping = get(RWVM_KEYWORD)
        if mapping is not None:
            row["rwvm"] = mapping
        return row
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    if per_frame is not None or shared is not None:
        frames = per_frame if per_frame is not None else [None] * row["n_frames"]
        row["frames"] = infos = [_frame_info(f, shared) for f in frames]
        _dimension_indices(infos, frames, ds.get("DimensionIndexSequence"))
        _enhanced_params(row["params"], shared)
    rwvm = ds.get("RealWorldValueMappingSequence")
    if rwvm and "RealWorldValueSlope" in rwvm[0]:  # the fast reader reads the same first item
        item = rwvm[0]
        row["rwvm"] = [float(item.RealWorldValueSlope), float(item.get("RealWorldValueIntercept", 0.0) or 0.0)]
    refs = ds.get("ReferencedSeriesSequence")
    if refs:
        row["ref_series_uid"] = str(refs[0].get("SeriesInstanceUID", "")) or None
    segs = ds.get("SegmentSequence")
    if segs:
        row["segments"] = [[int(s.SegmentNumber), str(s.get("SegmentLabel", ""))] for s in segs]
    return row


def _dimension_indices(infos: list[FrameInfo], frames: Any, index_seq: Any) -> None:
    """Each frame's DimensionIndexValues without the in-stack position (``t['dimidx']``)."""
    pointers = [int(item.get("DimensionIndexPointer", 0)) for item in index_seq or []]
    drop = {i for i, p in enumerate(pointers) if p in (0x00209057, 0x00200032)}  # InStackPosition, IPP
    for info, frame in zip(infos, frames, strict=True):
        content = _first(frame, "FrameContentSequence") if frame else None
        values = _get(content, "DimensionIndexValues") if content is not None else None
        if isinstance(values, int):
            values = [values]
        if isinstance(values, list):
            kept = [v for i, v in enumerate(values) if i not in drop]
            if kept:
                info["t"]["dimidx"] = kept


def _as_stored(value: Any, bits_alloc: Any, pixel_rep: Any) -> int | None:
    """A US-or-SS pixel value (PixelPaddingValue...) as the integer the stored pixels hold.

    Its VR follows PixelRepresentation, but implicit-VR files and the fast reader
    give the unsigned bit pattern; this gives the same number on both paths.
    """
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, (int, float)) or not isinstance(bits_alloc, int) or bits_alloc not in (8, 16, 32):
        return None
    v, span = int(value), 1 << bits_alloc
    if pixel_rep == 1 and v >= span // 2:
        v -= span
    elif pixel_rep != 1 and v < 0:
        v += span
    return v


def _enhanced_params(params: dict[str, Any], shared: Dataset | None) -> None:
    """Acquisition parameters that enhanced objects keep in shared functional groups."""
    for seq, keywords in (
        ("MRTimingAndRelatedParametersSequence", ("RepetitionTime", "FlipAngle", "EchoTrainLength")),
        ("MREchoSequence", ("EffectiveEchoTime",)),
        ("CTXRayDetailsSequence", ("KVP",)),
        ("CTReconstructionSequence", ("ConvolutionKernel",)),
        ("PixelMeasuresSequence", ("SliceThickness", "SpacingBetweenSlices")),
    ):
        item = _first(shared, seq)
        for kw in keywords:
            if item is not None and kw in item and kw not in params:
                params[kw] = _get(item, kw)
