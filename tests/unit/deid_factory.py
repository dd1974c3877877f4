"""Tiny real DICOM for the deid/audit tests: a CT series with PHI everywhere, a SEG on it.

Every identifying value carries :data:`CANARY` so a leak is found by grepping for it.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CANARY = "ZZPHI"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECRET = b"unit-test-secret-0123456789abcdef"


def ct_dataset(
    patient_id: str = f"{CANARY}PID01",
    study_uid: str | None = None,
    series_uid: str | None = None,
    for_uid: str | None = None,
    index: int = 0,
    study_date: str = "20190315",
    sop_class: str = CT_IMAGE,
    modality: str = "CT",
) -> Dataset:
    """One CT slice (8x8, native pixels) with PHI in plain, nested and private elements."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = for_uid or generate_uid()
    ds.PatientName = f"{CANARY}^Anna^Maria"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19610203"
    ds.PatientSex = "F"
    ds.PatientAge = "058Y"
    ds.PatientWeight = "61.5"
    ds.PatientSize = "1.68"
    ds.AccessionNumber = f"{CANARY}ACC01"
    ds.InstitutionName = f"{CANARY} Hospital"
    ds.ReferringPhysicianName = f"{CANARY}^Doctor"
    ds.StudyDescription = f"CT ABDOMEN {CANARY}^STUDY 20190315"
    ds.SeriesDescription = f"{CANARY}^Anna PV 5mm"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = "081317.000001"
    ds.ContentTime = "081523.000001"
    ds.StudyID = f"{CANARY}SID"
    ds.Modality = modality
    ds.Manufacturer = "TestVendor"
    ds.SeriesNumber = 3
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index) * 2.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 2.0
    request = Dataset()
    request.RequestedProcedureDescription = f"{CANARY}^REQ"
    request.RequestedProcedureID = f"{CANARY}RP"
    ds.RequestAttributesSequence = Sequence([request])
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "Z1",
        f"99{CANARY}",
        f"{CANARY} proc",
    )
    ds.ProcedureCodeSequence = Sequence([code])
    block = ds.private_block(0x0009, f"{CANARY} PRIVATE", create=True)
    block.add_new(0x01, "LO", f"{CANARY}^PRIV")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = (np.arange(64, dtype=np.int16).reshape(8, 8) + index).tobytes()
    return ds


def write_ct_series(folder: Path, n: int = 3, **kwargs: object) -> list[Path]:
    """``n`` slices of one series under ``folder`` (PHI-bearing folder and file names)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    kwargs = {"study_uid": study, "series_uid": series, "for_uid": frame, **kwargs}
    paths = []
    for i in range(n):
        ds = ct_dataset(index=i, **kwargs)  # type: ignore[arg-type]
        path = folder / f"{CANARY}_slice{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_seg(ct_paths: list[Path], out: Path) -> Path:
    """A binary highdicom SEG over the CT slices (all frames, one segment)."""
    sources = [pydicom.dcmread(p) for p in ct_paths]
    mask = np.zeros((len(sources), 8, 8), dtype=bool)
    mask[:, 2:6, 2:6] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="liver",
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("10200004", "SCT", "Liver"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        algorithm_identification=None,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out
