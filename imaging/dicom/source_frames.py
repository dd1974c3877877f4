"""Where a source series' frames are, and a label volume sampled on them.

The SEG and RTSTRUCT writers place a NIfTI mask on the source DICOM grid frame by
frame: each frame's pixel centres come from *that frame's* ImagePositionPatient /
ImageOrientationPatient / PixelSpacing (functional groups for multi-frame images),
and the mask is sampled there (nearest neighbour through the NIfTI affine).
``load_source`` reads the private ``sources/<series_key>.json`` ingest writes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

# LPS (DICOM patient coordinates) -> RAS (NIfTI world): flip x and y.
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


class SegGeometryError(ValueError):
    """A source frame lacks the geometry needed to place the mask (names file, tag, value)."""


@dataclass(frozen=True)
class FrameGeometry:
    """Where one source frame's pixels are, in LPS millimetres."""

    ipp: np.ndarray  # (3,) ImagePositionPatient
    iop: np.ndarray  # (6,) ImageOrientationPatient: row direction, column direction
    spacing: np.ndarray  # (2,) PixelSpacing: between rows, between columns
    rows: int
    cols: int

    def pixel_centres_lps(self) -> np.ndarray:
        """(rows, cols, 3) LPS coordinates of every pixel centre (PS3.3 C.7.6.2.1.1)."""
        r = np.arange(self.rows, dtype=np.float64)[:, None, None]
        c = np.arange(self.cols, dtype=np.float64)[None, :, None]
        x_dir, y_dir = self.iop[:3], self.iop[3:]
        return self.ipp + c * self.spacing[1] * x_dir + r * self.spacing[0] * y_dir


@dataclass
class SourceSeries:
    """Headers of the source instances of one volume and its frames in volume k order."""

    headers: list[Dataset]  # metadata only, no pixel data
    frames: list[tuple[int, int]]  # (index into headers, 1-based frame number)
    paths: list[Path] = field(default_factory=list)

    @property
    def is_multiframe(self) -> bool:
        return len(self.headers) == 1 and int(self.headers[0].get("NumberOfFrames", 1) or 1) > 1

    def geometry(self, header_index: int, frame_number: int) -> FrameGeometry:
        return frame_geometry(self.headers[header_index], frame_number, self._name(header_index))

    def _name(self, i: int) -> str:
        return str(self.paths[i]) if i < len(self.paths) else f"source[{i}]"


def _attr(ds: Dataset, keyword: str, where: str, n: int) -> np.ndarray:
    if keyword not in ds:
        raise SegGeometryError(f"{where}: attribute {keyword} is missing")
    value = np.asarray([float(v) for v in ds[keyword].value], dtype=np.float64)
    if value.shape != (n,) or not np.all(np.isfinite(value)):
        raise SegGeometryError(f"{where}: attribute {keyword} has invalid value {list(ds[keyword].value)}")
    return value


def _functional(ds: Dataset, frame_number: int, seq: str, keyword: str) -> Dataset | None:
    """The item of functional group ``seq`` that holds ``keyword`` for a frame (per-frame wins)."""
    for groups_kw, index in (("PerFrameFunctionalGroupsSequence", frame_number - 1), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(groups_kw)
        if groups and index < len(groups) and seq in groups[index]:
            item = groups[index][seq][0]
            if keyword in item:
                return item
    return None


def frame_geometry(ds: Dataset, frame_number: int = 1, where: str = "source") -> FrameGeometry:
    """Geometry of frame ``frame_number`` (1-based) of a single- or multi-frame image.

    Raises:
        SegGeometryError: a position, orientation or spacing attribute is missing or invalid.
    """
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows <= 0 or cols <= 0:
        raise SegGeometryError(f"{where}: Rows/Columns invalid ({rows}x{cols})")
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame_number <= nframes:
        raise SegGeometryError(f"{where}: frame {frame_number} outside NumberOfFrames={nframes}")
    where_f = f"{where} frame {frame_number}"
    pos = _functional(ds, frame_number, "PlanePositionSequence", "ImagePositionPatient") or ds
    ori = _functional(ds, frame_number, "PlaneOrientationSequence", "ImageOrientationPatient") or ds
    pix = _functional(ds, frame_number, "PixelMeasuresSequence", "PixelSpacing") or ds
    iop = _attr(ori, "ImageOrientationPatient", where_f, 6)
    if abs(float(np.dot(iop[:3], iop[3:]))) > 1e-3 or not np.allclose(
        [np.linalg.norm(iop[:3]), np.linalg.norm(iop[3:])], 1.0, atol=1e-3
    ):
        raise SegGeometryError(f"{where_f}: ImageOrientationPatient {iop.tolist()} is not two orthonormal vectors")
    spacing = _attr(pix, "PixelSpacing", where_f, 2)
    if np.any(spacing <= 0):
        raise SegGeometryError(f"{where_f}: PixelSpacing {spacing.tolist()} must be positive")
    return FrameGeometry(_attr(pos, "ImagePositionPatient", where_f, 3), iop, spacing, rows, cols)


def load_source(sources_json: str | os.PathLike[str]) -> SourceSeries:
    """Read the private ``sources/<series_key>.json`` written by ingest and the source headers.

    Raises:
        FileNotFoundError: the JSON or a listed DICOM file is missing.
        pydicom.errors.InvalidDicomError: a listed file is not DICOM.
    """
    spec = json.loads(Path(sources_json).read_text(encoding="utf-8"))
    paths = [Path(p) for p in spec["files"]]
    headers: list[Dataset] = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    frames = [(int(i), int(f)) for i, f in spec.get("frames") or [(i, 1) for i in range(len(paths))]]
    # Single-frame files have one frame whatever number the index gives it (0 or 1).
    frames = [(i, f if int(headers[i].get("NumberOfFrames", 1) or 1) > 1 else 1) for i, f in frames]
    if frames and min(f for _, f in frames) == 0:
        frames = [(i, f + 1) for i, f in frames]  # a 0-based index: DICOM frame numbers start at 1
    return SourceSeries(headers, frames, paths)


def sample_labels(labels: np.ndarray, affine_ras: np.ndarray, geom: FrameGeometry) -> np.ndarray:
    """Nearest-neighbour sample a (i, j, k) label volume at a source frame's pixel centres.

    Returns a (rows, cols) array of the volume's dtype; pixels outside the volume are 0.
    """
    ras = geom.pixel_centres_lps() * LPS_TO_RAS
    inv = np.linalg.inv(affine_ras)
    ijk = ras @ inv[:3, :3].T + inv[:3, 3]
    idx = np.rint(ijk).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(labels.shape[:3])), axis=-1)
    out = np.zeros((geom.rows, geom.cols), dtype=labels.dtype)
    sel = idx[inside]
    out[inside] = labels[sel[:, 0], sel[:, 1], sel[:, 2]]
    return out
