"""Instances that are not a plain stack of single-frame slices.

Enhanced (multi-frame) MR with per-frame functional groups, a secondary capture,
a Basic Text SR, and the pixel scrambling of a series in an unknown (private)
transfer syntax.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from imaging.synth import phantom as ph
from imaging.synth.canaries import CANARY_TOKEN, SubjectPhi, apply_phi
from imaging.synth.writer import (
    SeriesInfo,
    base_dataset,
    encode,
    make_uid,
    new_file_meta,
    sample_slice,
    set_pixels,
)

ENHANCED_MR = UID("1.2.840.10008.5.1.4.1.1.4.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
# Philips' private compression: real exports carry it; nothing public decodes it.
UNKNOWN_TS = "1.3.46.670589.33.1.4.1"

# Attributes of the classic image modules that an enhanced instance keeps per frame
# (functional groups) instead of at the top level.
_PER_FRAME = ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness",
              "SliceLocation", "RepetitionTime", "EchoTime", "FlipAngle", "EchoTrainLength",
              "ScanningSequence", "SequenceVariant", "SequenceName", "ScanOptions", "MRAcquisitionType",
              "InstanceNumber")


def _item(**kwargs: object) -> Dataset:
    ds = Dataset()
    for key, value in kwargs.items():
        setattr(ds, key, value)
    return ds


def write_enhanced_mr(info: SeriesInfo, phantom: ph.Phantom, path: Path,
                      rng: np.random.Generator) -> np.ndarray:
    """Write ``info.grid`` as one Enhanced MR instance (frames in acquisition order).

    Returns:
        the label volume (cols, rows, n) in sorted (k) order.
    """
    g = info.grid
    ds = base_dataset(info)
    for key in _PER_FRAME:
        if key in ds:
            delattr(ds, key)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = info.sop_uid(0)
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = g.n_slices
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.AcquisitionContrast = info.contrast
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.MRAcquisitionType = "2D"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionDateTime = info.phi.dates["AcquisitionDate"] + info.phi.times["AcquisitionTime"]
    info.phi.extra["AcquisitionDateTime"] = ds.AcquisitionDateTime
    dim_uid = make_uid(info.seed, info.series_uid, "dimension")
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionIndexSequence = Sequence([
        _item(DimensionOrganizationUID=dim_uid, DimensionIndexPointer=0x00209056,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="Stack ID"),
        _item(DimensionOrganizationUID=dim_uid, DimensionIndexPointer=0x00209057,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="In-Stack Position Number"),
    ])
    params = {"RepetitionTime": 550.0, "EchoTime": 10.0, "FlipAngle": 90.0, "EchoTrainLength": 1}
    shared = _item(
        PixelMeasuresSequence=Sequence([_item(PixelSpacing=list(g.spacing), SliceThickness=g.thickness)]),
        PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=g.iop)]),
        MRTimingAndRelatedParametersSequence=Sequence([_item(
            RepetitionTime=params["RepetitionTime"], FlipAngle=params["FlipAngle"],
            EchoTrainLength=params["EchoTrainLength"], RFEchoTrainLength=1, GradientEchoTrainLength=0)]),
        MREchoSequence=Sequence([_item(EffectiveEchoTime=params["EchoTime"])]),
    )
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    # Position along the stack: InStackPositionNumber follows the normal, frames are in acquisition order.
    rank = np.empty(g.n_slices, dtype=int)
    rank[g.sorted_order()] = np.arange(1, g.n_slices + 1)
    frames, labels, per_frame = [], [], []
    for k in range(g.n_slices):
        values, lab = sample_slice(phantom, g, k, info.contrast, rng)
        frames.append(encode(values, ds))
        labels.append(lab)
        per_frame.append(_item(
            FrameContentSequence=Sequence([_item(
                StackID="1", InStackPositionNumber=int(rank[k]), DimensionIndexValues=[1, int(rank[k])],
                FrameAcquisitionNumber=k + 1,
                FrameAcquisitionDateTime=ds.AcquisitionDateTime)]),
            PlanePositionSequence=Sequence([_item(ImagePositionPatient=g.ipp(k))]),
        ))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    set_pixels(ds, np.stack(frames))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return np.stack([labels[i].T for i in g.sorted_order()], axis=-1)


def write_secondary_capture(info: SeriesInfo, phantom: ph.Phantom, path: Path) -> None:
    """A screenshot-like 8-bit image of the middle slice: SC Image Storage, no geometry."""
    g = info.grid
    values, _ = sample_slice(phantom, g, g.n_slices // 2, "CT", None)
    img = np.clip((values + 160.0) / 400.0 * 255.0, 0, 255).astype(np.uint8)
    img = np.kron(img, np.ones((2, 2), dtype=np.uint8))  # viewers export at screen resolution
    ds = Dataset()
    ds.file_meta = new_file_meta(SECONDARY_CAPTURE, info.sop_uid(0))
    apply_phi(ds, info.phi, info.what)
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, info.sop_uid(0)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = "ACME VIEWER"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = info.study_uid, info.series_uid
    ds.SeriesNumber, ds.InstanceNumber = info.series_number, 1
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = img.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = img.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def report_text(phi: SubjectPhi) -> str:
    """The SR's free text: a report that names the patient (PHI canary)."""
    return f"Findings for {CANARY_TOKEN}^REPORT^{phi.tag}: liver, spleen and kidneys unremarkable."


def write_basic_text_sr(info: SeriesInfo, path: Path) -> None:
    """A Basic Text SR radiology report (Modality SR) whose text carries a canary."""
    ds = Dataset()
    ds.file_meta = new_file_meta(BASIC_TEXT_SR, info.sop_uid(0))
    apply_phi(ds, info.phi, info.what)
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, info.sop_uid(0)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Modality = "SR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = info.study_uid, info.series_uid
    ds.SeriesNumber, ds.InstanceNumber = info.series_number, 1
    ds.Manufacturer = "RIS"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_item(CodeValue="18748-4", CodingSchemeDesignator="LN",
                                                 CodeMeaning="Diagnostic Imaging Report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = Sequence([])
    ds.PerformedProcedureCodeSequence = Sequence([])
    finding = _item(RelationshipType="CONTAINS", ValueType="TEXT", TextValue=report_text(info.phi))
    finding.ConceptNameCodeSequence = Sequence([_item(CodeValue="121071", CodingSchemeDesignator="DCM",
                                                      CodeMeaning="Finding")])
    ds.ContentSequence = Sequence([finding])
    info.phi.extra["ReportText"] = finding.TextValue
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def scramble_unknown_ts(ds: Dataset, k: int) -> None:
    """Mark ``ds`` as encoded in a private transfer syntax and make its pixels opaque."""
    ds.file_meta.TransferSyntaxUID = UID(UNKNOWN_TS)
    data = np.frombuffer(ds.PixelData, dtype=np.uint8) ^ np.uint8(0x5A)
    ds.PixelData = data.tobytes()
    ds["PixelData"].VR = "OB"
