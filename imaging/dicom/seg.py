"""DICOM SEG that lands on the source pixels: sample a NIfTI mask on each source frame, write with highdicom.

The mask comes from inference on the ingested NIfTI grid (RAS affine), which may
differ from the source DICOM grid: ingest reorders slices, resamples gantry-tilted
CT and splits 4D series. So the SEG is not built by reshaping the NIfTI array;
instead, for every source frame, the world position of each pixel centre is
computed from *that frame's* ImagePositionPatient / ImageOrientationPatient /
PixelSpacing and the mask is sampled there (nearest neighbour through the NIfTI
affine; :mod:`imaging.dicom.source_frames`). Oblique, feet-first, decubitus and tilted
sources are then right by construction, and every SEG frame references the exact source
instance/frame. Reading a SEG back frame by frame is :mod:`imaging.dicom.seg_read`.

``identity="deidentified"`` (default) writes the keyed pseudonyms instead of the
patient/study identifiers (the same mapping ``imaging deid`` uses, so the SEG
resolves against the de-identified copy of the study: the caller passes the header
de-identification of :mod:`imaging.deid.seg_header`); ``identity="source"``
keeps the original identifiers for writing back to the hospital PACS.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.seg import SegmentationTypeValues
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from imaging.dicom.source_frames import LPS_TO_RAS, SegGeometryError, SourceSeries, sample_labels
from imaging.fsutil import atomic_path
from imaging.keys import Pseudonymizer

log = logging.getLogger(__name__)

IDENTITIES = ("deidentified", "source")
# source: one SEG frame per source frame (references it; read by OHIF, highdicom, Slicer on
# untilted stacks). regular: frames on the ingested (de-tilted, evenly spaced) NIfTI grid;
# dcmqi / 3D Slicer refuse frames on gantry-tilted source slices ("Frame 0 origin ... is
# outside image geometry") and read this one.
GEOMETRIES = ("source", "regular")
# Used when the config has no codes for a label name (a warning says so).
_FALLBACK_CATEGORY = {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"}
_FALLBACK_TYPE = {"value": "85756007", "scheme": "SCT", "meaning": "Tissue"}


def _code(spec: Mapping[str, Any]) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(str(spec["value"]), str(spec["scheme"]), str(spec["meaning"]))


def segment_descriptions(
    present: Sequence[tuple[int, str]],
    coded: Mapping[str, Mapping[str, Any]],
    algorithm: hd.AlgorithmIdentificationSequence,
) -> list[hd.seg.SegmentDescription]:
    """One description per (segment number, label name) with codes from config."""
    out = []
    for number, name in present:
        spec = coded.get(name)
        if spec is None:
            log.warning("no coded description configured for label '%s': using 'Tissue'", name)
            spec = {"category": _FALLBACK_CATEGORY, "type": _FALLBACK_TYPE}
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=_code(spec.get("category", _FALLBACK_CATEGORY)),
                segmented_property_type=_code(spec["type"]),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor(*spec["display_lab"]) if spec.get("display_lab") else None,
            )
        )
    return out


_TYPE2 = ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")


def with_type2(ds: Dataset) -> Dataset:
    """``ds`` with every type 2 patient/study attribute highdicom copies present (empty when absent).

    Anonymised exports often drop e.g. PatientBirthDate; type 2 means "present, may be
    empty", and highdicom reads them as attributes of the first source image.
    """
    if all(kw in ds for kw in _TYPE2):
        return ds
    return _fill_type2(copy.deepcopy(ds))  # headers hold no pixels; the source header stays as read


def _fill_type2(ds: Dataset) -> Dataset:
    for kw in _TYPE2:
        if kw not in ds:
            setattr(ds, kw, "")
    return ds


@dataclass
class SegResult:
    """What was written: segments (number -> label name) and the number of non-empty frames."""

    path: Path
    segments: dict[int, str]
    n_frames: int
    series_instance_uid: str
    sop_instance_uid: str


def write_seg(
    out_path: str | os.PathLike[str],
    source: SourceSeries,
    labels: np.ndarray,
    affine_ras: np.ndarray,
    label_names: Mapping[int, str],
    coded: Mapping[str, Mapping[str, Any]],
    *,
    algorithm_name: str,
    algorithm_version: str,
    pseudonymizer: Pseudonymizer | None = None,
    identity: str = "deidentified",
    segmentation_type: str = "BINARY",
    geometry: str = "source",
    series_number: int = 9001,
    software_version: str = "imaging",
    header_deid: Callable[[Sequence[Dataset]], list[Dataset]] | None = None,
) -> SegResult | None:
    """Write a DICOM SEG of ``labels`` (an (i, j, k) integer volume) over the source frames.

    Segments are the label values present (background 0 excluded), renumbered
    1..n in label order; empty frames are omitted. Returns None (and writes
    nothing) when no label is present: a SEG must have at least one segment.

    Raises:
        ValueError: ``identity`` or ``geometry`` unknown, or deidentified without a pseudonymizer
            and ``header_deid``.
        SegGeometryError: a source frame's geometry is missing or invalid.

    ``header_deid`` de-identifies the source headers the SEG copies (with ``identity=
    "deidentified"``): :func:`imaging.deid.seg_header.header_deid` gives the one ``imaging
    deid`` applies. It is passed in because reading DICOM never imports the de-identification.
    """
    if identity not in IDENTITIES:
        raise ValueError(f"seg.identity '{identity}' is not one of {IDENTITIES}")
    if geometry not in GEOMETRIES:
        raise ValueError(f"seg.geometry '{geometry}' is not one of {GEOMETRIES}")
    if identity == "deidentified" and (pseudonymizer is None or header_deid is None):
        raise ValueError("seg.identity=deidentified needs the project secret (pseudonymizer) and header_deid")
    present = [int(v) for v in np.unique(labels) if v != 0]
    if not present:
        return None
    remap = np.zeros(int(labels.max()) + 1, dtype=np.uint8)
    for number, value in enumerate(present, start=1):
        remap[value] = number
    plane: dict[str, Any] = {}
    if geometry == "regular":
        frames, plane = regular_frames(labels, affine_ras)
    else:
        frames = _sampled_frames(source, labels, affine_ras)
    pixel_array = remap[frames]

    if identity == "deidentified":
        assert header_deid is not None
        headers = header_deid(source.headers)
    else:
        headers = [with_type2(h) for h in source.headers]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=str(algorithm_version)
    )
    names = [(n, label_names.get(v, f"label_{v}")) for n, v in enumerate(present, start=1)]
    # Deterministic SEG UIDs: a re-run of the same model on the same series rewrites the same object.
    # (a re-push to the archive then stores no duplicate). The geometry is part of the seed:
    # the two SEGs of one series are different objects. So is the content: an option that changes
    # the mask or its encoding (largest_component, tta_flip, inference.labels, seg.type, the segment
    # codes...) gives a new object under a new UID; an archive holding the old UID
    # would otherwise answer "present" and keep the stale mask (two objects, one UID).
    seed = f"seg:{headers[0].SeriesInstanceUID}:{algorithm_name}:{algorithm_version}"
    seed += ":regular" if geometry == "regular" else ""
    seed += ":" + seg_content_digest(pixel_array, names, segmentation_type, coded)

    def uid_src(value: str) -> str:
        if pseudonymizer is not None:
            return pseudonymizer.uid(value)
        return str(pydicom.uid.generate_uid(prefix="2.25.", entropy_srcs=[value]))

    series_uid, sop_uid = uid_src(seed + ":series"), uid_src(seed + ":sop")
    with warnings.catch_warnings():
        # The pseudonymous PatientName is one component by design (as `imaging deid` writes it).
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=pixel_array,
            segmentation_type=SegmentationTypeValues(segmentation_type),
            segment_descriptions=segment_descriptions(names, coded, algorithm),
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer="imaging",
            manufacturer_model_name=algorithm_name[:64],
            software_versions=software_version,
            device_serial_number=str(algorithm_version),
            series_description=f"{algorithm_name} v{algorithm_version}"[:64],
            omit_empty_frames=True,
            **plane,
        )
    if identity == "deidentified":
        # SOP Common, so highdicom does not copy it: declares the study dates shifted
        # (as `imaging deid` does); `imaging audit` flags undeclared dates.
        seg.LongitudinalTemporalInformationModified = headers[0].get(
            "LongitudinalTemporalInformationModified", "MODIFIED")
    out = Path(out_path)
    seg.preamble = bytes(128)  # never inherit or invent preamble content
    with atomic_path(out, suffix=".dcm") as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return SegResult(out, dict(names), int(seg.NumberOfFrames), series_uid, sop_uid)


def seg_content_digest(pixel_array: np.ndarray, names: Sequence[tuple[int, str]], segmentation_type: str,
                       coded: Mapping[str, Mapping[str, Any]]) -> str:
    """A digest of what a SEG encodes: its frames' pixels, segments, their codes and the SEG type.

    Derived from the content rather than from the options that produced it, so every option
    that changes the object changes its UID (options added later included), and one that does
    not (largest_component on a one-piece mask) keeps it: the archive's "already present" stays true.
    """
    h = hashlib.sha256()
    h.update(f"{segmentation_type}|{pixel_array.shape}|{pixel_array.dtype.str}|".encode())
    used = {name: coded.get(name) for _, name in names}
    h.update(json.dumps([list(names), used], sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(pixel_array).data)
    return h.hexdigest()[:32]


def _sampled_frames(source: SourceSeries, labels: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    """(n_frames, rows, cols): one plane per frame of the source image(s), in highdicom's order.

    Single-frame sources: one plane per header, in header order. A multi-frame
    source: one plane per frame of the file; frames not in this volume (other
    time points of a 4D file) stay empty and are omitted from the SEG.
    """
    if source.is_multiframe:
        n = int(source.headers[0].NumberOfFrames)
        wanted = {f for _, f in source.frames}
        g0 = source.geometry(0, 1)
        out = np.zeros((n, g0.rows, g0.cols), dtype=labels.dtype)
        for f in sorted(wanted):
            out[f - 1] = sample_labels(labels, affine_ras, source.geometry(0, f))
        return out
    planes = [sample_labels(labels, affine_ras, source.geometry(i, 1)) for i in range(len(source.headers))]
    return np.stack(planes)


def regular_frames(labels: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Frames on the NIfTI grid itself: one per k slice, with highdicom's plane arguments.

    Frame pixel (row r, column c) of slice k is voxel (i=c, j=r, k): the row direction
    (IOP[:3]) is the i axis, the column direction the j axis, both in LPS.

    Raises:
        SegGeometryError: the grid's i/j axes are not orthogonal (a sheared affine).
    """
    lin = np.asarray(affine_ras, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    axes = (lin / spacing) * LPS_TO_RAS[:, None]  # RAS -> LPS columns
    if abs(float(axes[:, 0] @ axes[:, 1])) > 1e-4:
        raise SegGeometryError(f"NIfTI grid: i and j axes are not orthogonal ({axes[:, :2].T.tolist()})")
    orientation = [float(v) for v in np.concatenate([axes[:, 0], axes[:, 1]])]
    positions = []
    for k in range(labels.shape[2]):
        ras = affine_ras[:3, :3] @ np.array([0.0, 0.0, k]) + affine_ras[:3, 3]
        positions.append(hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT,
                                                  [float(v) for v in ras * LPS_TO_RAS]))
    plane = {
        "plane_positions": positions,
        "plane_orientation": hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT, orientation),
        "pixel_measures": hd.PixelMeasuresSequence([float(spacing[1]), float(spacing[0])], float(spacing[2])),
    }
    return np.ascontiguousarray(np.transpose(labels[:, :, :], (2, 1, 0))), plane
