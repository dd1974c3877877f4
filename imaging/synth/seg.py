"""Ground truth of a synthetic series: a NIfTI label map and a DICOM SEG.

The NIfTI holds the labels on the series' own grid (i = column, j = row, k = slice
sorted along the slice normal) with the RAS affine of that grid; the SEG (BINARY,
one segment per organ, SNOMED codes) references every source instance.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset

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
