"""Ground truth of a synthetic series: a NIfTI label map and a DICOM SEG.

The NIfTI holds the labels on the series' own grid (i = column, j = row, k = slice
sorted along the slice normal) with the RAS affine of that grid; the SEG (BINARY,
one segment per organ, SNOMED codes) references every source instance.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from imaging.fsutil import atomic_path
from imaging.synth.canaries import SubjectPhi
from imaging.synth.phantom import LABELS

# SNOMED CT codes (segmented property category / type) per label.
CATEGORY = ("123037004", "SCT", "Anatomical Structure")
TYPES: dict[str, tuple[str, str, str]] = {
    "liver": ("10200004", "SCT", "Liver"),
    "spleen": ("78961009", "SCT", "Spleen"),
    "kidney": ("64033007", "SCT", "Kidney"),
}


def write_label_nifti(path: Path, labels_ijk: np.ndarray, affine_ras: np.ndarray) -> None:
    """Write a uint8 label map with sform (and qform when the affine has no shear)."""
    img = nib.Nifti1Image(labels_ijk.astype(np.uint8), affine_ras)
    img.set_sform(affine_ras, code=1)
    rot = affine_ras[:3, :3] / np.linalg.norm(affine_ras[:3, :3], axis=0)
    if np.allclose(rot.T @ rot, np.eye(3), atol=1e-6):
        img.set_qform(affine_ras, code=1)
    else:
        # A sheared (gantry-tilt) grid has no quaternion form: sform only.
        img.set_qform(None, code=0)
    img.header["descrip"] = b"synthetic ground truth labels"
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)


def segment_descriptions() -> list[hd.seg.SegmentDescription]:
    """One manual segment per organ label (segment number = label value)."""
    out = []
    for value in sorted(v for v in LABELS if v):
        name = LABELS[value]
        out.append(
            hd.seg.SegmentDescription(
                segment_number=value,
                segment_label=name,
                segmented_property_category=hd.sr.CodedConcept(*CATEGORY),
                segmented_property_type=hd.sr.CodedConcept(*TYPES[name]),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
    return out


@contextlib.contextmanager
def _quiet_highdicom() -> Iterator[None]:
    """highdicom logs source UIDs at INFO: keep identifiers out of the logs."""
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def write_seg(
    path: Path,
    headers: Sequence[Dataset],
    label_frames: np.ndarray,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    phi: SubjectPhi,
) -> Dataset:
    """Write a BINARY DICOM SEG of ``label_frames`` over ``headers``.

    Args:
        path: output file.
        headers: source instances (pixel data not needed), one per frame.
        label_frames: (n, rows, cols) uint8 labels, frame i on ``headers[i]``.
        series_uid, sop_uid, series_number: identifiers of the SEG.
        phi: the subject (dates/description canaries; the rest is copied from the source).

    Returns:
        the SEG dataset (as written).
    """
    with _quiet_highdicom():
        seg = _segmentation(headers, label_frames, series_uid, sop_uid, series_number, phi)
    # highdicom stamps the wall clock; a deterministic export uses the subject's dates.
    for key in ("InstanceCreationDate", "ContentDate", "SeriesDate"):
        setattr(seg, key, phi.dates["StudyDate"])
    for key in ("InstanceCreationTime", "ContentTime", "SeriesTime"):
        setattr(seg, key, phi.times["ContentTime"])
    # ...and random UIDs / timestamps in nested items: derive them from the SEG's UID.
    dim_uid = f"{sop_uid[:56]}.9221"
    for seq in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(seq, []):
            item.DimensionOrganizationUID = dim_uid
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = phi.dates["StudyDate"] + phi.times["ContentTime"]
            phi.extra["ContributionDateTime"] = item.ContributionDateTime
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path, enforce_file_format=True)
    return seg


def _segmentation(headers: Sequence[Dataset], label_frames: np.ndarray, series_uid: str, sop_uid: str,
                  series_number: int, phi: SubjectPhi) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=list(headers),
        pixel_array=label_frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="imaging-synth",
        manufacturer_model_name="phantom",
        software_versions="synth-1.0",
        device_serial_number=phi.text["DeviceSerialNumber"],
        series_description=phi.series_description("GROUND TRUTH SEG"),
        content_label="GROUNDTRUTH",
        content_creator_name=phi.text["OperatorsName"],
        omit_empty_frames=False,
    )


# Transfer syntaxes no installed encoder writes for a BINARY SEG (highdicom refuses RLE for
# 1-bit frames; pydicom knows neither Deflated Image Frame Compression nor 1-bit RLE):
# the synthetic export and the tests build them here from a native SEG's frames.
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
DEFLATED_IMAGE_FRAME = "1.2.840.10008.1.2.8.1"


def encode_seg_frames(seg: Dataset, transfer_syntax: str) -> Dataset:
    """A copy of a native (uncompressed) BINARY or LABELMAP SEG with every frame compressed.

    RLE (PS3.5 Annex G): a 1-bit frame's pixels packed 8 to a byte (first pixel in the
    lowest bit, as native 1-bit data), one PackBits segment per frame. Deflated Image Frame
    Compression: one raw deflate stream (RFC 1951) of the packed frame per fragment.

    Raises:
        ValueError: ``transfer_syntax`` is neither of those two.
    """
    import zlib

    from pydicom.encaps import encapsulate
    from pydicom.pixels.encoders.native import _encode_segment

    frames = np.asarray(seg.pixel_array).reshape(int(seg.get("NumberOfFrames", 1)), seg.Rows, seg.Columns)
    out = copy.deepcopy(seg)
    encoded = []
    for frame in frames:
        if int(seg.BitsAllocated) == 1:
            raw = np.packbits(frame.ravel().astype(np.uint8), bitorder="little").tobytes()
        else:
            raw = frame.astype(f"<u{int(seg.BitsAllocated) // 8}").tobytes()
        if transfer_syntax == RLE_LOSSLESS:
            body = _encode_segment(raw, len(raw))
            encoded.append(struct.pack("<2L", 1, 64) + b"\x00" * 56 + bytes(body))
        elif transfer_syntax == DEFLATED_IMAGE_FRAME:
            packer = zlib.compressobj(9, zlib.DEFLATED, -15)
            encoded.append(packer.compress(raw) + packer.flush())
        else:
            raise ValueError(f"transfer syntax '{transfer_syntax}': only RLE Lossless and Deflated Image Frame "
                             "Compression are built here")
    out.PixelData = encapsulate(encoded)
    out["PixelData"].VR = "OB"
    out["PixelData"].is_undefined_length = True
    out.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return out


def save_encoded(seg: Dataset, path: Path) -> None:
    """Write a SEG from :func:`encode_seg_frames` as a DICOM file (preamble, File Meta, explicit VR LE).

    pydicom's ``save_as`` refuses a transfer syntax UID it does not know (Deflated Image Frame
    Compression is newer than pydicom 3.0), so the parts are written here.
    """
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset, write_file_meta_info

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".dcm") as tmp, open(tmp, "wb") as raw:
        raw.write(b"\x00" * 128 + b"DICM")
        fp = DicomFileLike(raw)
        write_file_meta_info(fp, seg.file_meta, enforce_standard=True)
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, seg)
