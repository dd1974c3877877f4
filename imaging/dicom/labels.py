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
from collections.abc import Iterator
from dataclasses import dataclass
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


# DICOM SEG transfer syntaxes that no installed decoder reads: pydicom (and pylibjpeg, GDCM,
# DCMTK 3.6.7) decode RLE only for 8/16/32 bits allocated, and none knows Deflated Image
# Frame Compression (added to PS3.5 in 2024). Both are decoded here, frame by frame.
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
DEFLATED_IMAGE_FRAME = "1.2.840.10008.1.2.8.1"
_TS_NAMES = {RLE_LOSSLESS: "RLE Lossless", DEFLATED_IMAGE_FRAME: "Deflated Image Frame Compression"}

LABELMAP, ONEHOT = "labelmap", "onehot"
# Part of a volume's re-ingest fingerprint: bumped when SEG labels are written differently,
# so labels of an older version (2: overlaps were flattened) are redone, never reused.
SEG_LABELS_VERSION = 3
_REQUIRED = (("(0062,0002)", "SegmentSequence"), ("(5200,9230)", "PerFrameFunctionalGroupsSequence"),
             ("(0028,0010)", "Rows"), ("(0028,0011)", "Columns"), ("(0028,0100)", "BitsAllocated"),
             ("(7FE0,0010)", "PixelData"))


@dataclass
class Labels:
    """Ground truth on a volume grid.

    ``layout`` is ``labelmap`` (``data`` is (x, y, z), each voxel the dataset label value of
    its one segment) or ``onehot`` when segments overlap (``data`` is (x, y, z, C) uint8,
    channel c is label value c of ``dataset.json``, channel 0 the voxels of no segment).
    """

    data: np.ndarray
    layout: str

    def values(self) -> list[int]:
        if self.layout == ONEHOT:
            return [c for c in range(1, self.data.shape[3]) if self.data[..., c].any()]
        return [int(v) for v in np.unique(self.data) if v > 0]

    def mask(self, value: int) -> np.ndarray:
        if self.layout == ONEHOT:
            return self.data[..., value] > 0 if value < self.data.shape[3] else np.zeros(self.data.shape[:3], bool)
        return np.asarray(self.data == value)


class LabelCanvas:
    """Segments painted onto a grid: a label map until two labels claim one voxel, then one-hot.

    A label map cannot hold a voxel of two segments (segment 2 inside segment 1): flattening
    would silently drop voxels of one of them, so the first overlap turns the canvas one-hot.
    """

    def __init__(self, shape: tuple[int, int, int], table: LabelTable) -> None:
        self.shape = shape
        self.dtype = np.uint8 if max(table.ids.values()) < 256 else np.uint16
        self.labelmap: np.ndarray | None = np.zeros(shape, dtype=self.dtype)
        self.onehot: np.ndarray | None = None

    def paint(self, value: int, mask: np.ndarray, k: int | None = None) -> None:
        """Add ``mask`` (a (x, y) plane at slice ``k``, or the whole (x, y, z) grid) as label ``value``."""
        where = np.s_[:, :, k] if k is not None else np.s_[:, :, :]
        if self.labelmap is not None:
            target = self.labelmap[where]
            if not np.any(mask & (target != 0) & (target != value)):
                target[mask] = value
                return
            self._to_onehot()
        assert self.onehot is not None
        if value >= self.onehot.shape[3]:
            grow = np.zeros((*self.shape, value + 1 - self.onehot.shape[3]), np.uint8)
            self.onehot = np.concatenate([self.onehot, grow], axis=3)
        self.onehot[..., value][where][mask] = 1

    def _to_onehot(self) -> None:
        assert self.labelmap is not None
        lab, self.labelmap = self.labelmap, None
        self.onehot = np.zeros((*self.shape, int(lab.max()) + 1), np.uint8)
        for v in np.unique(lab):
            if v:
                self.onehot[..., int(v)] = lab == v

    def result(self) -> Labels:
        if self.labelmap is not None:
            return Labels(self.labelmap, LABELMAP)
        assert self.onehot is not None
        self.onehot[..., 0] = ~self.onehot[..., 1:].any(axis=3)
        return Labels(self.onehot, ONEHOT)


def seg_frames(ds: Any, file_ref: str) -> np.ndarray:
    """Every frame of a SEG as ``(n, rows, cols)`` stored values (0/1 for BINARY).

    Raises:
        LabelError: pixel data that cannot be decoded; the reason names the transfer syntax.
    """
    ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    n, rows, cols = int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)
    bits = int(ds.BitsAllocated)
    where = f"file {file_ref}: (7FE0,0010) PixelData in (0002,0010) TransferSyntaxUID = '{ts}' ({_ts_name(ts)})"
    try:
        if ts in (RLE_LOSSLESS, DEFLATED_IMAGE_FRAME) and (bits == 1 or ts == DEFLATED_IMAGE_FRAME):
            return np.stack([_native_frame(_decompress(f, ts), bits, rows, cols) for f in _encapsulated(ds, n)])
        frames = np.asarray(ds.pixel_array)
    except LabelError as exc:
        raise LabelError(f"{where}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the syntax is named; a decoder's text (paths) stays private
        raise LabelError(f"{where}: no decoder here reads it ({type(exc).__name__})") from exc
    return frames.reshape(n, rows, cols)


def _ts_name(ts: str) -> str:
    if ts in _TS_NAMES:
        return _TS_NAMES[ts]
    from pydicom.uid import UID

    return UID(ts).name if ts else "missing"


def _encapsulated(ds: Any, n: int) -> list[bytes]:
    from pydicom.encaps import generate_frames

    ext = ds.get("ExtendedOffsetTable")
    offsets = (ext, ds.get("ExtendedOffsetTableLengths")) if ext is not None else None
    frames = list(generate_frames(ds.PixelData, number_of_frames=n, extended_offsets=offsets))
    if len(frames) != n:
        raise LabelError(f"{len(frames)} encapsulated frames for (0028,0008) NumberOfFrames = {n}")
    return frames


def _decompress(frame: bytes, ts: str) -> bytes:
    if ts == DEFLATED_IMAGE_FRAME:
        import zlib

        # The standard says deflate (RFC 1951); some writers add the zlib wrapper (RFC 1950).
        for wbits in (-15, 15):
            try:
                unpacker = zlib.decompressobj(wbits)
                return unpacker.decompress(frame) + unpacker.flush()
            except zlib.error:
                continue
        raise LabelError("a frame is neither a deflate nor a zlib stream")
    # PS3.5 Annex G: a 64-byte header of segment offsets, then PackBits segments. pydicom's
    # PackBits routines are reused; its frame decoder assumes 8 bits or more per sample.
    from pydicom.pixels.decoders.rle import _rle_decode_segment, _rle_parse_header

    offsets = _rle_parse_header(frame[:64])
    if len(offsets) != 1:
        raise LabelError(f"{len(offsets)} RLE segments in a 1-bit frame (one expected)")
    return bytes(_rle_decode_segment(frame[offsets[0]:]))


def _native_frame(raw: bytes, bits: int, rows: int, cols: int) -> np.ndarray:
    """A decompressed frame in native layout: 1-bit pixels packed from the lowest bit, each frame from a byte."""
    n = rows * cols
    if bits == 1:
        if len(raw) < (n + 7) // 8:
            raise LabelError(f"a frame decodes to {len(raw)} bytes, {(n + 7) // 8} needed for {rows}x{cols} 1-bit pixels")
        return np.unpackbits(np.frombuffer(raw, np.uint8), count=n, bitorder="little").reshape(rows, cols)
    size = bits // 8
    if bits not in (8, 16) or len(raw) < n * size:
        raise LabelError(f"a frame decodes to {len(raw)} bytes for {rows}x{cols} pixels of {bits} bits")
    return np.frombuffer(raw, f"<u{size}", count=n).reshape(rows, cols)


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
        raise LabelError(f"label file: unreadable NIfTI: {type(exc).__name__}") from exc
    if src.ndim == 4 and src.shape[3] == 1:
        src = src[..., 0]
    if src.ndim != 3:
        raise LabelError(f"label file: expected 3D labels, got shape {src.shape}")
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
