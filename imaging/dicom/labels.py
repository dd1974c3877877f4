"""Ground truth -> label map on a volume's grid (DICOM SEG or NIfTI label files).

Segment names (lowercased) map to label integers that are the same across the
whole dataset and are written to ``dataset.json`` as ``{"labels": {"0":
"background", "1": "liver", ...}}``. Integers already in an existing
``dataset.json`` keep their meaning on re-ingest; new names get the next ones.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from imaging.dicom.geometry import Grid, slice_normal

log = logging.getLogger(__name__)

BACKGROUND = "background"
# Optional names of the integer values in NIfTI label files: {"1": "liver", ...}.
LABEL_NAMES_FILES = ("labels.json", "dataset.json")


class LabelError(ValueError):
    """Ground truth that cannot be put on the volume grid (names file and tag)."""


def normalise(name: str) -> str:
    return " ".join(str(name).strip().lower().split())


class LabelTableFrozen(RuntimeError):
    """A frozen table (in a worker process) met a name it does not know."""


class LabelTable:
    """Name -> integer, stable across runs (existing integers kept, new names appended sorted)."""

    def __init__(self, existing: dict[str, str] | None = None) -> None:
        self.ids: dict[str, int] = {BACKGROUND: 0}
        self.frozen = False
        for key, name in sorted((existing or {}).items(), key=lambda kv: int(kv[0])):
            self.ids.setdefault(normalise(name), int(key))

    def _new(self, name: str) -> None:
        if self.frozen:
            raise LabelTableFrozen(name)
        self.ids[name] = max(self.ids.values()) + 1

    def add(self, names: list[str]) -> None:
        for name in sorted({normalise(n) for n in names} - set(self.ids)):
            self._new(name)

    def add_numbered(self, pairs: list[tuple[int, str]]) -> None:
        """Register names in the order of their source numbers (SEG segment numbers, NIfTI values),
        so a dataset labelled 1 liver, 2 spleen keeps those integers when nothing conflicts."""
        for _, name in sorted(pairs, key=lambda p: (p[0], normalise(p[1]))):
            if normalise(name) not in self.ids:
                self._new(normalise(name))

    def as_json(self) -> dict[str, str]:
        return {str(v): k for k, v in sorted(self.ids.items(), key=lambda kv: kv[1])}


def read_nifti_label_names(labels_dir: Path) -> dict[int, str]:
    """Names of NIfTI label values from ``labels.json`` (``{"1": "liver"}`` or ``{"labels": {...}}``)."""
    for name in LABEL_NAMES_FILES:
        p = labels_dir / name
        if p.is_file():
            try:
                obj = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("cannot read label names from '%s': %s", p.name, exc)
                continue
            table = obj.get("labels", obj) if isinstance(obj, dict) else {}
            out = {}
            for k, v in table.items():
                if str(k).isdigit() and isinstance(v, str):
                    out[int(k)] = v
                elif str(v).isdigit():  # {"liver": 1}
                    out[int(v)] = str(k)
            return out
    return {}


def seg_to_labels(seg_path: str, grid: Grid, table: LabelTable, rel: str) -> np.ndarray:
    """Rasterise a DICOM SEG onto ``grid`` as a uint8/uint16 label map ``(x, y, z)``.

    Each SEG frame is placed by its PlanePositionSequence position: the frame's
    normal coordinate picks the output slice, its in-plane offset shifts it
    (nearest neighbour). Frames of another orientation or pixel spacing are refused.

    Raises:
        LabelError: unreadable SEG, or frames not on the volume's grid.
    """
    import highdicom as hd
    from scipy import ndimage

    try:
        seg = hd.seg.segread(seg_path)
        frames = np.asarray(seg.pixel_array)
    except Exception as exc:  # noqa: BLE001 - a bad SEG is that series' label error, never fatal
        raise LabelError(f"file '{rel}': cannot read SEG: {type(exc).__name__}: {str(exc)[:120]}") from exc
    if frames.ndim == 2:
        frames = frames[None]
    names = {int(s.SegmentNumber): normalise(s.get("SegmentLabel", f"segment {s.SegmentNumber}"))
             for s in seg.SegmentSequence}
    table.add(list(names.values()))
    seg_type = str(seg.get("SegmentationType", "BINARY"))
    threshold = 0.5 * float(seg.get("MaximumFractionalValue", 255)) if seg_type == "FRACTIONAL" else 0
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    out = np.zeros(grid.shape, dtype=np.uint8 if max(table.ids.values()) < 256 else np.uint16)
    inv = np.linalg.inv(grid.affine_lps)
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ipp = _pick(item, shared, "PlanePositionSequence", "ImagePositionPatient")
        iop = _pick(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _pick(item, shared, "PixelMeasuresSequence", "PixelSpacing")
        where = f"file '{rel}' frame {i + 1}"
        if ipp is None or iop is None or spacing is None:
            raise LabelError(f"{where}: missing (0020,0032)/(0020,0037)/(0028,0030) in functional groups")
        r, c, _ = slice_normal(iop)
        if not (np.allclose(r, grid.row_dir, atol=1e-3) and np.allclose(c, grid.col_dir, atol=1e-3)):
            raise LabelError(f"{where}: (0020,0037) ImageOrientationPatient = {list(map(float, iop))} "
                             "differs from the volume's")
        if not np.allclose([float(spacing[0]), float(spacing[1])], [grid.dy, grid.dx], atol=1e-3):
            raise LabelError(f"{where}: (0028,0030) PixelSpacing = {list(map(float, spacing))} differs from the volume's")
        ci, cj, ck = (inv @ np.r_[np.asarray(ipp, float), 1.0])[:3]
        k = int(round(ck))
        if not 0 <= k < grid.shape[2] or abs(ck - k) > 0.25:
            raise LabelError(f"{where}: (0020,0032) ImagePositionPatient = {list(map(float, ipp))} "
                             "is not on a slice of the volume")
        if seg_type == "LABELMAP":
            mask = np.asarray(frames[i])
            values = np.zeros(int(mask.max()) + 1, dtype=out.dtype)
            for number, name in names.items():
                if number < len(values):
                    values[number] = table.ids[name]
            plane = values[mask.astype(np.int64)].T
        else:
            number = int(_pick(item, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber") or 1)
            plane = (np.asarray(frames[i]) > threshold).T * table.ids[names.get(number, f"segment {number}")]
        if plane.shape[0] > grid.shape[0] or plane.shape[1] > grid.shape[1]:
            raise LabelError(f"{where}: (0028,0010)/(0028,0011) frame size {plane.shape[::-1]} differs from the volume's")
        if abs(ci) > 1e-3 or abs(cj) > 1e-3 or plane.shape != grid.shape[:2]:
            # Placed by position (nearest): a tilted volume's grid is wider than one frame.
            plane = ndimage.affine_transform(plane, np.ones(2), offset=(-ci, -cj), output_shape=grid.shape[:2],
                                             order=0, mode="grid-constant", cval=0)
        np.copyto(out[:, :, k], plane.astype(out.dtype), where=plane > 0)
    return out


def _pick(item: Any, shared: Any, seq: str, keyword: str) -> Any:
    for group in (item, shared):
        if group is not None and seq in group and len(group[seq].value) and keyword in group[seq].value[0]:
            return group[seq].value[0].get(keyword)
    return None


def nifti_to_labels(path: str | os.PathLike[str], grid: Grid, table: LabelTable, names: dict[int, str]) -> np.ndarray:
    """Resample a NIfTI label file by world coordinates (nearest) onto ``grid``.

    Raises:
        LabelError: the file is not a readable 3D NIfTI.
    """
    import nibabel as nib  # only when NIfTI ground truth exists

    try:
        img: Any = nib.load(str(path))
        src = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001
        raise LabelError(f"label file '{Path(path).name}': unreadable NIfTI: {type(exc).__name__}") from exc
    if src.ndim == 4 and src.shape[3] == 1:
        src = src[..., 0]
    if src.ndim != 3:
        raise LabelError(f"label file '{Path(path).name}': expected 3D labels, got shape {src.shape}")
    src = np.rint(src).astype(np.int64)
    values = sorted(int(v) for v in np.unique(src) if v > 0)
    table.add([names.get(v, f"label {v}") for v in values])
    lut = np.zeros(max(values, default=0) + 1, dtype=np.int64)
    for v in values:
        lut[v] = table.ids[normalise(names.get(v, f"label {v}"))]
    # Nearest neighbour by explicit rounding, one output slice at a time: scipy's
    # boundary handling drops voxels that land a rounding error past the last index.
    m = np.linalg.inv(img.affine) @ grid.affine_ras
    nx, ny, nz = grid.shape
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    res = np.zeros(grid.shape, dtype=np.int64)
    for k in range(nz):
        idx = np.rint(np.stack([ii, jj, np.full_like(ii, k), np.ones_like(ii)], axis=-1) @ m[:3].T).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < np.asarray(src.shape)), axis=-1)
        res[..., k][ok] = src[idx[ok][:, 0], idx[ok][:, 1], idx[ok][:, 2]]
    dtype = np.uint8 if max(table.ids.values()) < 256 else np.uint16
    return lut[np.clip(res, 0, len(lut) - 1)].astype(dtype)
