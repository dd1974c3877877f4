"""DICOM RTSTRUCT from the same mask as the SEG: closed planar contours on every source slice.

For radiotherapy planning systems that read RT Structure Sets and not SEG. The
mask of each source frame is *the same* as the SEG's: the NIfTI prediction
sampled at that frame's pixel centres (:func:`imaging.dicom.source_frames.sample_labels`).
Its outlines are traced with scikit-image's marching squares
(``skimage.measure.find_contours`` at level 0.5 on the zero-padded mask, so every
contour is closed) and mapped to patient coordinates through *that frame's own*
ImagePositionPatient / ImageOrientationPatient / PixelSpacing.

Why not ``rt-utils`` (qurit/rt-utils, read at 026e664): it places every slice with
one matrix built from the first slice's position plus ``k`` times the mean
spacing along the slice normal (``get_pixel_to_patient_transformation_matrix``).
On gantry-tilted CT the slice origins are not along the normal, and with uneven
spacing slice ``k`` is not at ``k`` times the mean step: contours would lie off
the slices they reference. It also sorts files by position and reads them from a
folder (ours come from the private sources index, 4D/multi-frame included) and
needs OpenCV. pydicom has no RTSTRUCT writer and highdicom none either, so the
dataset is assembled here with pydicom, module by module (PS3.3 A.19).

Holes: an organ with a hole gives an outer and an inner contour on the slice;
readers combine the contours of one ROI on a slice with the even-odd rule (the
common convention of planning systems), which is what :func:`rasterise_contours` does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from imaging.dicom.source_frames import FrameGeometry, SourceSeries, sample_labels
from imaging.fsutil import atomic_path
from imaging.keys import Pseudonymizer

log = logging.getLogger(__name__)

RT_STRUCTURE_SET = UID("1.2.840.10008.5.1.4.1.1.481.3")
DETACHED_STUDY = UID("1.2.840.10008.3.1.2.3.1")  # Study Component Management SOP class, as referenced by RT
IDENTITIES = ("deidentified", "source")
_COLOURS = [(220, 80, 60), (60, 160, 220), (80, 200, 90), (230, 200, 60), (170, 90, 210), (240, 140, 40)]
_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                   "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                   "PatientIdentityRemoved", "DeidentificationMethod", "LongitudinalTemporalInformationModified")


@dataclass
class RtstructResult:
    path: Path
    rois: dict[int, str]  # ROI number -> label name
    n_contours: int


def frame_contours(mask: np.ndarray, geom: FrameGeometry) -> list[np.ndarray]:
    """Closed contours (each (n, 3) LPS mm, last point not repeated) of a 2D (rows, cols) mask."""
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.uint8), 1)
    out = []
    for c in find_contours(padded, 0.5):
        rc = c[:-1] - 1.0 if len(c) > 1 and np.allclose(c[0], c[-1]) else c - 1.0
        if len(rc) < 3:
            continue
        rows, cols = rc[:, 0:1], rc[:, 1:2]
        xyz = geom.ipp + cols * geom.spacing[1] * geom.iop[:3] + rows * geom.spacing[0] * geom.iop[3:]
        out.append(xyz)
    return out


def _frames(source: SourceSeries) -> list[tuple[int, int]]:
    if source.is_multiframe:
        return sorted({(0, f) for _, f in source.frames}, key=lambda t: t[1])
    return [(i, 1) for i in range(len(source.headers))]


def _image_ref(header: Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return item


def _base(first: Dataset, series_uid: str, sop_uid: str, label: str, algorithm: str, version: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 100")
    now = dt.datetime.now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SOPClassUID, ds.SOPInstanceUID = RT_STRUCTURE_SET, UID(sop_uid)
    for kw in _STUDY_KEYWORDS:  # Patient and General Study modules: the source's (or its pseudonyms)
        if kw in first:
            setattr(ds, kw, first.get(kw))
        elif kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            setattr(ds, kw, "")  # type 2
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = UID(series_uid)
    ds.SeriesNumber = 9002
    ds.SeriesDescription = f"{algorithm} v{version}"[:64]
    ds.OperatorsName = ""
    ds.Manufacturer = "imaging"
    ds.ManufacturerModelName = algorithm[:64]
    ds.SoftwareVersions = str(version)[:64]
    ds.InstanceNumber = 1
    ds.StructureSetLabel = label[:16]
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    return ds


def _mask_digest(labels: np.ndarray, affine_ras: np.ndarray, names: Mapping[int, str]) -> str:
    """A digest of what the contours are drawn from: the mask, its grid and the ROI names."""
    h = hashlib.sha256()
    h.update(f"{labels.shape}|{labels.dtype.str}|{np.round(np.asarray(affine_ras, float), 4).tolist()}|".encode())
    h.update(repr(sorted(names.items())).encode())
    h.update(np.ascontiguousarray(labels).data)
    return h.hexdigest()[:32]


def write_rtstruct(
    out_path: str | os.PathLike[str],
    source: SourceSeries,
    labels: np.ndarray,
    affine_ras: np.ndarray,
    label_names: Mapping[int, str],
    *,
    algorithm_name: str,
    algorithm_version: str,
    pseudonymizer: Pseudonymizer | None = None,
    identity: str = "deidentified",
    header_deid: Callable[[Sequence[Dataset]], list[Dataset]] | None = None,
) -> RtstructResult | None:
    """Write an RT Structure Set of ``labels`` (an (i, j, k) integer volume, RAS affine) over the source slices.

    One ROI per label value present (named as ``label_names``), one CLOSED_PLANAR
    contour per outline per source frame, each referencing its source instance (and
    frame, for a multi-frame source). Returns None (writes nothing) when the mask is empty.

    ``header_deid``: the SEG's header de-identification (:func:`imaging.deid.seg_header.header_deid`,
    the same options), so both objects carry the same pseudonyms.

    Raises:
        ValueError: ``identity`` unknown, or deidentified without a pseudonymizer.
        SegGeometryError: a source frame's geometry is missing or invalid.
    """
    if identity not in IDENTITIES:
        raise ValueError(f"rtstruct identity '{identity}' is not one of {IDENTITIES}")
    if identity == "deidentified" and (pseudonymizer is None or header_deid is None):
        raise ValueError("identity=deidentified needs the project secret (pseudonymizer) and header_deid")
    present = [int(v) for v in np.unique(labels) if v != 0]
    if not present:
        return None
    headers = source.headers
    if identity == "deidentified":
        assert header_deid is not None
        # The same de-identified header as the SEG's (same options): same pseudonyms in both.
        headers = header_deid(headers)
    first = headers[0]
    multi = source.is_multiframe
    # The content is in the seed, as for the SEG: a mask changed by an option (largest_component,
    # labels, tta_flip) is a new object under a new UID, never a stale one under the old UID.
    seed = (f"rtstruct:{first.SeriesInstanceUID}:{algorithm_name}:{algorithm_version}:"
            f"{_mask_digest(labels, affine_ras, {v: label_names.get(v, str(v)) for v in present})}")
    # Without a pseudonymizer (identity=source, no secret) as the SEG: derived from the seed, so a
    # re-run writes the same UIDs (the archive answers "present") and a changed mask new ones.
    uid_src = pseudonymizer.uid if pseudonymizer is not None else (
        lambda s: str(generate_uid(prefix="2.25.", entropy_srcs=[s])))
    ds = _base(first, uid_src(seed + ":series"), uid_src(seed + ":sop"), algorithm_name, algorithm_name,
               str(algorithm_version))
    frame_uid = str(first.FrameOfReferenceUID)
    ds.FrameOfReferenceUID = frame_uid  # Frame of Reference module (in the RT Structure Set IOD since 2019)
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")

    contours: dict[int, list[Dataset]] = {v: [] for v in present}
    refs: list[Dataset] = []
    for hi, fn in _frames(source):
        geom = source.geometry(hi, fn)
        plane = sample_labels(labels, affine_ras, geom)
        ref = _image_ref(headers[hi], fn if multi else None)
        refs.append(ref)
        for value in present:
            for xyz in frame_contours(plane == value, geom):
                item = Dataset()
                item.ContourImageSequence = DicomSequence([_image_ref(headers[hi], fn if multi else None)])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(xyz)
                item.ContourData = [f"{v:.4f}" for v in xyz.ravel()]
                contours[value].append(item)

    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence(refs)
    study = Dataset()
    study.ReferencedSOPClassUID = DETACHED_STUDY
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    for_item = Dataset()
    for_item.FrameOfReferenceUID = frame_uid
    for_item.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([for_item])

    rois, roi_contours, observations = [], [], []
    names: dict[int, str] = {}
    for number, value in enumerate(present, start=1):
        name = str(label_names.get(value, f"label_{value}"))
        names[number] = name
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, frame_uid, name[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = list(_COLOURS[(value - 1) % len(_COLOURS)])
        if contours[value]:
            rc.ContourSequence = DicomSequence(contours[value])
        roi_contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType, obs.ROIInterpreter = "ORGAN", ""
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    if identity == "deidentified":
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    out = Path(out_path)
    with atomic_path(out, suffix=".dcm") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        ds.save_as(tmp, enforce_file_format=True)
    return RtstructResult(out, names, sum(len(c) for c in contours.values()))


@dataclass
class RoiContour:
    """One contour read back: its ROI name, referenced instance (and frame), LPS points."""

    roi: str
    sop_instance_uid: str
    frame: int | None
    points: np.ndarray  # (n, 3)


def read_rtstruct(path: str | os.PathLike[str]) -> list[RoiContour]:
    """Every contour of an RT Structure Set, read with pydicom."""
    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = []
    for rc in ds.ROIContourSequence:
        for c in rc.get("ContourSequence", []):
            ref = c.ContourImageSequence[0]
            frame = int(ref.ReferencedFrameNumber) if "ReferencedFrameNumber" in ref else None
            pts = np.asarray([float(v) for v in c.ContourData], dtype=float).reshape(-1, 3)
            out.append(RoiContour(names[int(rc.ReferencedROINumber)], str(ref.ReferencedSOPInstanceUID), frame, pts))
    return out


def rasterise_contours(contours: Sequence[np.ndarray], geom: FrameGeometry) -> np.ndarray:
    """Fill contours (LPS points on the frame's plane) on the frame's pixel grid, even-odd rule.

    Uses matplotlib's point-in-polygon (a different code path from the tracing), so a
    round trip checks the writer rather than repeating it.
    """
    from matplotlib.path import Path as MplPath

    rows, cols = np.mgrid[0:geom.rows, 0:geom.cols]
    centres = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(float)
    out = np.zeros(geom.rows * geom.cols, dtype=bool)
    for pts in contours:
        rel = np.asarray(pts, float) - geom.ipp
        c = rel @ geom.iop[:3] / geom.spacing[1]
        r = rel @ geom.iop[3:] / geom.spacing[0]
        out ^= MplPath(np.stack([c, r], axis=1), closed=False).contains_points(centres)
    return out.reshape(geom.rows, geom.cols)
