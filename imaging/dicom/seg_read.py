"""Read a DICOM SEG back frame by frame with pydicom: an oracle independent of how it was written."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset


@dataclass
class SegFrame:
    """One frame read back from a SEG: where it is, what it references, its mask."""

    position: np.ndarray
    orientation: np.ndarray
    spacing: np.ndarray
    segment_number: int
    referenced_sop_instance_uid: str
    referenced_frame: int | None
    mask: np.ndarray


def read_seg_frames(path: str | os.PathLike[str]) -> list[SegFrame]:
    """Decode a SEG frame by frame with pydicom (a reader independent of how it was written).

    For a LABELMAP SEG ``segment_number`` is 0 and ``mask`` holds segment numbers.
    """
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    shared = ds.SharedFunctionalGroupsSequence[0]
    out = []
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ori = (item if "PlaneOrientationSequence" in item else shared).PlaneOrientationSequence[0]
        pix = (item if "PixelMeasuresSequence" in item else shared).PixelMeasuresSequence[0]
        # A ``regular`` SEG's frames derive from no single source frame: no reference.
        deriv = item.get("DerivationImageSequence") or [Dataset()]
        src = (deriv[0].get("SourceImageSequence") or [Dataset()])[0]
        seg_id = item.get("SegmentIdentificationSequence")
        out.append(
            SegFrame(
                position=np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float),
                orientation=np.asarray(ori.ImageOrientationPatient, dtype=float),
                spacing=np.asarray(pix.PixelSpacing, dtype=float),
                segment_number=int(seg_id[0].ReferencedSegmentNumber) if seg_id else 0,
                referenced_sop_instance_uid=str(src.get("ReferencedSOPInstanceUID", "")),
                referenced_frame=int(src.ReferencedFrameNumber[0] if isinstance(src.get("ReferencedFrameNumber"), list) else src.ReferencedFrameNumber) if "ReferencedFrameNumber" in src else None,
                mask=pixels[k],
            )
        )
    return out
