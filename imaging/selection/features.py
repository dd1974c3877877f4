"""What selection rules look at, per series: catalog row + dataset sidecar + (hospital side) one source header.

The catalog and the sidecar (``<dataset>/volumes/<key>.json``) hold the technical
attributes (modality, shape, spacing, tilt, kernel, ImageType, transfer syntax).
Attributes that are not de-identified data (series description, contrast agent,
acquisition date/time, orientation cosines) are read from the *first source file*
listed in the private ``sources/<key>.json``: selection runs on the hospital side
where those files are, and these values never leave this module except as the
outcome of a comparison (the description is never logged or reported).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imaging.dicom.catalog import CatalogRow

log = logging.getLogger(__name__)

# Transfer syntaxes that lose information (PS3.5 Table A-1 "lossy" ones).
LOSSY_TS = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
    "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.203",
}
_PRIVATE_TAGS = ["SeriesDescription", "ContrastBolusAgent", "SeriesDate", "SeriesTime", "AcquisitionDate",
                 "AcquisitionTime", "ImageOrientationPatient", "LossyImageCompression", "ImageType",
                 "ConvolutionKernel", "SliceThickness", "BodyPartExamined"]


@dataclass
class SeriesFeatures:
    """One series as the rules see it. ``None``: unknown (a condition on it fails)."""

    series_key: str
    study_key: str
    subject_key: str
    status: str  # the catalog status: ok | skipped | error
    ingest_reason: str = ""
    modality: str = ""
    body_part: str = ""
    image_type: tuple[str, ...] = ()
    plane: str | None = None  # axial | coronal | sagittal (the nearest)
    obliquity_deg: float | None = None  # angle between the slice normal and that plane's axis
    slice_thickness: float | None = None
    slice_spacing: float | None = None
    pixel_spacing: float | None = None  # the coarser in-plane spacing
    n_slices: int | None = None
    contrast: bool | None = None
    kernel: str | None = None
    description: str | None = field(default=None, repr=False)  # hospital side only
    acquired: str | None = field(default=None, repr=False)  # YYYYMMDDHHMMSS for the 'latest' tie-break
    series_number: int | None = None
    tilt_deg: float = 0.0
    uneven: bool = False
    lossy: bool | None = None


def plane_of(normal: np.ndarray) -> tuple[str, float]:
    """Nearest standard plane of a slice normal (LPS or RAS alike) and the angle to its axis in degrees."""
    n = np.abs(np.asarray(normal, float))
    n = n / np.linalg.norm(n)
    axis = int(np.argmax(n))
    return ("sagittal", "coronal", "axial")[axis], float(np.degrees(np.arccos(np.clip(n[axis], -1.0, 1.0))))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _private_header(private: Path | None, key: str) -> dict[str, Any]:
    """The few attributes selection needs from the first source file (hospital side)."""
    if private is None:
        return {}
    files = _read_json(private / "sources" / f"{key}.json").get("files") or []
    if not files:
        return {}
    import pydicom

    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=_PRIVATE_TAGS)
    except Exception as exc:  # noqa: BLE001 - an unreadable header leaves the values unknown
        log.warning("%s: source header unreadable for selection (%s)", key, type(exc).__name__)
        return {}
    out: dict[str, Any] = {k: ds.get(k) for k in _PRIVATE_TAGS if k in ds}
    out["TransferSyntaxUID"] = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    return out


def _plane_from_volume(dataset: Path, row: CatalogRow) -> tuple[str | None, float | None]:
    if not row.volume_path:
        return None, None
    try:
        import nibabel as nib

        affine = nib.load(str(dataset / row.volume_path)).affine  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - unknown orientation: conditions on it fail
        return None, None
    return plane_of(np.asarray(affine)[:3, 2])


def series_features(row: CatalogRow, dataset: Path, private: Path | None) -> SeriesFeatures:
    """Features of one catalog row (see the module docstring for the sources)."""
    side = _read_json(dataset / row.volume_path.replace(".nii.gz", ".json")) if row.volume_path else {}
    hdr = _private_header(private, row.series_key) if row.status == "ok" else {}
    f = SeriesFeatures(row.series_key, row.study_key, row.subject_key, row.status, row.reason,
                       modality=row.modality, tilt_deg=float(row.tilt_deg or 0.0),
                       uneven=bool(row.slice_spacing_uneven))
    f.body_part = str(row.body_part or side.get("BodyPartExamined") or hdr.get("BodyPartExamined") or "")
    image_type = side.get("ImageType") or hdr.get("ImageType") or []
    f.image_type = tuple(str(t) for t in ([image_type] if isinstance(image_type, str) else image_type))
    spacing = [float(v) for v in row.spacing.split("x")] if row.spacing else []
    if len(spacing) >= 3:
        f.pixel_spacing, f.slice_spacing = max(spacing[0], spacing[1]), spacing[2]
    shape = [int(v) for v in row.shape.split("x")] if row.shape else []
    f.n_slices = shape[2] if len(shape) >= 3 else (row.n_instances or None)
    f.slice_thickness = _float(side.get("SliceThickness")) or _float(hdr.get("SliceThickness")) or f.slice_spacing
    kernel = side.get("ConvolutionKernel") or hdr.get("ConvolutionKernel")
    if isinstance(kernel, str) or not kernel:
        f.kernel = str(kernel) if kernel else None
    else:  # a multi-valued kernel (Siemens: "Br40", "3")
        f.kernel = "\\".join(map(str, kernel))
    f.series_number = int(row.series_number) if str(row.series_number).strip().isdigit() else None
    if hdr:  # the source header was read: absent attributes mean "none", not "unknown"
        f.contrast = bool(str(hdr.get("ContrastBolusAgent") or "").strip())
        f.description = str(hdr.get("SeriesDescription") or "")
    date = str(hdr.get("SeriesDate") or hdr.get("AcquisitionDate") or "")
    time = str(hdr.get("SeriesTime") or hdr.get("AcquisitionTime") or "")
    f.acquired = (date + time.split(".")[0].ljust(6, "0")) if date else None
    iop = hdr.get("ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        v = np.asarray([float(x) for x in iop])
        f.plane, f.obliquity_deg = plane_of(np.cross(v[:3], v[3:]))
    else:
        f.plane, f.obliquity_deg = _plane_from_volume(dataset, row)
    ts = str(hdr.get("TransferSyntaxUID") or "")
    if ts or "LossyImageCompression" in hdr:
        f.lossy = ts in LOSSY_TS or str(hdr.get("LossyImageCompression") or "") == "01"
    elif side.get("TransferSyntax"):
        f.lossy = "lossy" in str(side["TransferSyntax"]).lower() and "lossless" not in str(
            side["TransferSyntax"]).lower()
    return f
