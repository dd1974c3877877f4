"""DICOM SEG -> label volume on an image volume's grid (one SEG instance or several of one series).

Each SEG frame is placed by its own functional groups (position, orientation, pixel
spacing) on the volume grid; segments that overlap give a one-hot volume
(:class:`~imaging.dicom.labels.LabelCanvas`), never a flattened one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from imaging.dicom.geometry import Grid, slice_normal
from imaging.dicom.labels import LabelCanvas, LabelError, Labels, LabelTable, normalise
from imaging.dicom.seg_decode import seg_frames

# Part of a volume's re-ingest fingerprint: bumped when SEG labels are written differently,
# so labels of an older version (2: overlaps were flattened) are redone, never reused.
SEG_LABELS_VERSION = 3
_REQUIRED = (("(0062,0002)", "SegmentSequence"), ("(5200,9230)", "PerFrameFunctionalGroupsSequence"),
             ("(0028,0010)", "Rows"), ("(0028,0011)", "Columns"), ("(0028,0100)", "BitsAllocated"),
             ("(7FE0,0010)", "PixelData"))


def seg_to_labels(seg_path: str, grid: Grid, table: LabelTable, file_ref: str) -> Labels:
    """Rasterise one DICOM SEG onto ``grid`` (a label map, or one-hot where its segments overlap).

    Each SEG frame is placed by its PlanePositionSequence position: the frame's
    normal coordinate picks the output slice, its in-plane offset shifts it
    (nearest neighbour). Frames of another orientation or pixel spacing are refused.

    Raises:
        LabelError: unreadable SEG, or frames not on the volume's grid.
    """
    canvas = LabelCanvas(grid.shape, table)
    for k, value, plane in _seg_planes(seg_path, grid, table, file_ref):
        canvas.paint(value, plane, k)
    return canvas.result()


def segs_to_labels(segs: list[tuple[str, str]], grid: Grid, table: LabelTable) -> Labels:
    """Several SEG instances of one image volume, ``(path, keyed file name)``, as one label volume.

    Policy: one label volume holds every instance whole. Instances with different segments
    are combined (one-hot where they overlap); the same segment in several instances (one
    segmentation stored several ways) must cover the same voxels. Two instances that
    disagree on a segment are two annotations of one structure: no single label volume
    holds both, so none is written and the reason names both files.

    Raises:
        LabelError: an unreadable instance, or two instances that disagree (both named).
    """
    if len(segs) == 1:  # the usual case: no comparisons, no second pass over the grid
        return seg_to_labels(segs[0][0], grid, table, segs[0][1])
    canvas = LabelCanvas(grid.shape, table)
    seen: dict[int, tuple[str, np.ndarray]] = {}
    for path, file_ref in sorted(segs):
        one = seg_to_labels(path, grid, table, file_ref)
        for value in one.values():
            mask = one.mask(value)
            if value in seen and not np.array_equal(seen[value][1], mask):
                name = table.as_json()[str(value)]
                raise LabelError(
                    f"SEG files {seen[value][0]} and {file_ref} both have segment '{name}' on different voxels "
                    f"({int(seen[value][1].sum())} vs {int(mask.sum())}): two annotations of one structure, "
                    "no single label volume holds both")
            seen.setdefault(value, (file_ref, mask))
            canvas.paint(value, mask)
    return canvas.result()


def _seg_planes(seg_path: str, grid: Grid, table: LabelTable, file_ref: str) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(slice k, label value, boolean (x, y) plane)`` for every segment of every frame of a SEG."""
    import pydicom
    from scipy import ndimage

    try:
        # pydicom, not highdicom's segread: highdicom refuses a transfer syntax pydicom does
        # not know (Deflated Image Frame Compression) before any frame is read.
        seg = pydicom.dcmread(seg_path)
    except Exception as exc:  # noqa: BLE001 - a bad SEG is that series' label error, never fatal
        # Not the library's text: cut at 120 characters it may hold a path cut where no key replaces it.
        raise LabelError(f"file {file_ref}: cannot read SEG: {type(exc).__name__}") from exc
    for tag, keyword in _REQUIRED:
        if keyword not in seg:
            raise LabelError(f"file {file_ref}: not a readable SEG: no {tag} {keyword}")
    frames = seg_frames(seg, file_ref)
    n_items = len(seg.PerFrameFunctionalGroupsSequence)
    if n_items != len(frames):  # a frame without its position (or a position without a frame) cannot be placed
        raise LabelError(f"file {file_ref}: (5200,9230) PerFrameFunctionalGroupsSequence has {n_items} item(s) "
                         f"for {len(frames)} frame(s) ((0028,0008) NumberOfFrames)")
    names = {int(s.SegmentNumber): normalise(s.get("SegmentLabel", f"segment {s.SegmentNumber}"))
             for s in seg.SegmentSequence}
    table.add(list(names.values()))
    seg_type = str(seg.get("SegmentationType", "BINARY"))
    threshold = 0.5 * float(seg.get("MaximumFractionalValue", 255)) if seg_type == "FRACTIONAL" else 0
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    inv = np.linalg.inv(grid.affine_lps)
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        where = f"file {file_ref} frame {i + 1}"
        ci, cj, k = _frame_slice(item, shared, grid, inv, where)
        if frames[i].shape[1] > grid.shape[0] or frames[i].shape[0] > grid.shape[1]:
            raise LabelError(f"{where}: (0028,0010)/(0028,0011) frame size {frames[i].shape} differs from the volume's")
        if seg_type == "LABELMAP":
            pairs = [(names[n], frames[i] == n) for n in names if n > 0]
        else:
            number = int(_pick(item, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber") or 1)
            pairs = [(names.get(number, f"segment {number}"), frames[i] > threshold)]
        for name, hit in pairs:
            plane = np.asarray(hit).T
            if not plane.any():
                continue
            if abs(ci) > 1e-3 or abs(cj) > 1e-3 or plane.shape != grid.shape[:2]:
                # Placed by position (nearest): a tilted volume's grid is wider than one frame.
                plane = ndimage.affine_transform(plane.astype(np.uint8), np.ones(2), offset=(-ci, -cj),
                                                 output_shape=grid.shape[:2], order=0, mode="grid-constant",
                                                 cval=0) > 0
            yield k, table.ids[name], plane


def _frame_slice(item: Any, shared: Any, grid: Grid, inv: np.ndarray, where: str) -> tuple[float, float, int]:
    """A frame's in-plane offset (columns, rows) and output slice, from its functional groups."""
    ipp = _pick(item, shared, "PlanePositionSequence", "ImagePositionPatient")
    iop = _pick(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = _pick(item, shared, "PixelMeasuresSequence", "PixelSpacing")
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
    return float(ci), float(cj), k


def _pick(item: Any, shared: Any, seq: str, keyword: str) -> Any:
    for group in (item, shared):
        if group is not None and seq in group and len(group[seq].value) and keyword in group[seq].value[0]:
            return group[seq].value[0].get(keyword)
    return None
