"""Assemble a planned volume's pixels (one series at a time) and write it as NIfTI.

Uncompressed little-endian pixels are read straight from the offset recorded by
the scan (no second header parse); everything else is decoded by pydicom with
its pylibjpeg / pyjpegls / gdcm plugins; either way each file by its own pixel
format (BitsStored, PixelRepresentation). A slice dropped at a repeated position
must hold the same values as the one kept (:func:`_check_duplicates`).
RescaleSlope/Intercept are applied per slice: an integer type when every slope
and intercept is integral (int16 when the values fit), float32 otherwise. PixelPaddingValue pixels take the lowest
real value of the volume (see :func:`_fill_padding`). Tilted, uneven or gappy stacks are resampled in world
coordinates onto the grid planned by :mod:`imaging.dicom.geometry`.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from imaging.cpus import usable_cpus
from imaging.dicom.geometry import Grid
from imaging.dicom.index_row import SliceRow
from imaging.dicom.nifti import nifti1_header
from imaging.dicom.pixels import (
    PixelFormat,
    VolumeError,
    common_dtype,
    read_file_frames,
    read_native_into,
)
from imaging.dicom.series import FileNamer, Slice, VolumePlan
from imaging.fsutil import atomic_path

try:  # ISA-L deflate: same gzip format, several times faster than zlib (optional)
    from isal import igzip as _gzip
    from isal import igzip_threaded as _gzip_threaded
except ImportError:  # pragma: no cover - exercised where isal is not installed
    import gzip as _gzip  # type: ignore[no-redef]

    _gzip_threaded = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DESCRIP = b"imaging ingest"
# gzip level 1: several times faster than 6 for a few percent more bytes.
COMPRESSLEVEL = 1
WRITE_CHUNK = 1 << 22
# Volumes this large are deflated by several threads in 1 MiB blocks (as pigz does): a 300-slice
# CT (157 MB) took 0.95 s on one thread, 0.54 s on two. Smaller ones: one thread, no pool to start.
THREADED_MIN_BYTES = 32 << 20
MAX_GZIP_THREADS = 4
# Dropped duplicates named in a remark (the rest counted): the source map lists every file kept.
MAX_NAMED = 5


def gzip_threads(nbytes: int) -> int:
    """Deflate threads for a volume of ``nbytes``: 0 when small (a plain stream), else the CPUs
    this process may use, 1 to 4 (block-wise: the bytes are the same for any number of threads)."""
    if _gzip_threaded is None or nbytes < THREADED_MIN_BYTES:
        return 0
    return max(1, min(MAX_GZIP_THREADS, usable_cpus()))


def assemble(plan: VolumePlan, name_of: FileNamer) -> np.ndarray:
    """The volume in NIfTI order ``(x=column, y=row, z[, t])``, rescaled and resampled.

    Raises:
        VolumeError: undecodable pixels, or duplicate positions with different pixels.
    """
    grid = plan.grid
    nt, nk = len(plan.slices), len(plan.slices[0])
    slots: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    fmts: dict[str, PixelFormat] = {}
    rows: dict[str, SliceRow] = {}
    for t, stack in enumerate(plan.slices):
        for k, s in enumerate(stack):
            slots[s.path].append((s.frame, t, k))
            rows[s.path] = s.row
            fmts[s.path] = PixelFormat.of(s.row)
    fmt0 = fmts[plan.slices[0][0].path]
    # Each file's stored values are decoded with its own format (exporters re-encode part of a
    # series: unsigned 12-bit beside signed 16-bit); the volume's type holds every file's range.
    raw = np.empty((nt, nk, fmt0.rows, fmt0.cols), dtype=common_dtype(fmts.values()))
    # Each file is read (decoded) once, whatever number of frames it holds.
    for path, where in slots.items():
        if (len(where) == 1 and not rows[path].get("mosaic")
                and read_native_into(raw[where[0][1], where[0][2]], path, fmts[path], where[0][0])):
            continue  # the common case: straight from the file into the volume, no temporary
        frames = read_file_frames(path, rows[path], name_of(path))
        for frame, t, k in where:
            raw[t, k] = frames[frame]  # stored values: each fits the common type, no wrap-around
    remark = _check_duplicates(grid, name_of)
    if remark:
        plan.remarks.append(remark)
    padding = _padding_mask(raw, plan.slices, fmts)
    data = _rescale(raw, plan.slices)
    if padding is not None:
        value = _fill_padding(data, padding)
        plan.remarks.append(f"{int(padding.sum())} (0028,0120) PixelPaddingValue pixels set to the lowest "
                            f"real value {value:g}")
    if grid.resampled:
        data = np.stack([resample_stack(data[t], grid) for t in range(nt)])
    out = data.transpose(3, 2, 1, 0)  # (t, k, row, col) -> (col, row, k, t): F-contiguous, no copy
    return out[..., 0] if nt == 1 else out


def _check_duplicates(grid: Grid, name_of: FileNamer) -> str | None:
    """Prove every dropped repeat of a position a true duplicate; the remark naming what was dropped.

    A repeat is dropped only when its modality values (stored values decoded with its own
    pixel format, times its own rescale) equal those of the slice kept, whatever its
    SOPInstanceUID says: an exporter may re-encode an instance and keep its UID.

    Raises:
        VolumeError: a repeat with other values, naming the files and what differs.
    """
    frames: dict[str, np.ndarray] = {}
    dropped_names: list[str] = []
    for kept, dropped in grid.duplicates:
        if (kept.path, kept.frame) != (dropped.path, dropped.frame):
            a, b = _values(kept, frames, name_of), _values(dropped, frames, name_of)
            if a.shape != b.shape or not np.array_equal(a, b):
                raise VolumeError(_duplicate_problem(kept, dropped, a, b, name_of))
        dropped_names.append(_name(dropped, name_of))
    if not dropped_names:
        return None
    shown = ", ".join(dropped_names[:MAX_NAMED])
    more = f" and {len(dropped_names) - MAX_NAMED} more" if len(dropped_names) > MAX_NAMED else ""
    return (f"{len(dropped_names)} duplicate slice(s) at repeated positions (0020,0032) dropped, their "
            f"pixel values identical to the slice kept: {shown}{more}")


def _values(s: Slice, cache: dict[str, np.ndarray], name_of: FileNamer) -> np.ndarray:
    """Modality values of one slice (float64: exact for 32-bit stored values and any rescale)."""
    if s.path not in cache:
        if len(cache) >= 4:  # a few files at a time: duplicates come in position order
            cache.clear()
        cache[s.path] = read_file_frames(s.path, s.row, name_of(s.path))
    return cache[s.path][s.frame].astype(np.float64) * s.slope + s.intercept


def _name(s: Slice, name_of: FileNamer) -> str:
    multi = int(s.row.get("n_frames") or 1) > 1 or bool(s.row.get("mosaic"))
    return f"file {name_of(s.path)}" + (f" frame {s.frame + 1}" if multi else "")


# What may tell two instances at one position apart: (tag, how to read it from a slice).
_DIFFERENCES: tuple[tuple[str, Any], ...] = (
    ("(0020,0011) SeriesNumber", lambda s: (s.row.get("params") or {}).get("SeriesNumber")),
    ("(0020,0012) AcquisitionNumber", lambda s: s.t.get("acq")),
    ("(0020,0013) InstanceNumber", lambda s: s.row.get("instance_number")),
    ("(0028,0100) BitsAllocated", lambda s: s.row.get("bits_alloc")),
    ("(0028,0101) BitsStored", lambda s: s.row.get("bits_stored")),
    ("(0028,0102) HighBit", lambda s: s.row.get("high_bit")),
    ("(0028,0103) PixelRepresentation", lambda s: s.row.get("pixel_rep")),
    ("(0028,1053) RescaleSlope", lambda s: s.slope),
    ("(0028,1052) RescaleIntercept", lambda s: s.intercept),
    ("(0002,0010) TransferSyntaxUID", lambda s: s.row.get("ts")),
)


def _duplicate_problem(kept: Slice, dropped: Slice, a: np.ndarray, b: np.ndarray, name_of: FileNamer) -> str:
    """The error for a repeated position whose values differ: files, what differs and how much."""
    what = [f"{tag} {get(kept)} vs {get(dropped)}" for tag, get in _DIFFERENCES if get(kept) != get(dropped)]
    if kept.sop_uid and kept.sop_uid == dropped.sop_uid:
        what.append("the same (0008,0018) SOPInstanceUID")
    if a.shape != b.shape:
        values = f"pixel arrays {a.shape} vs {b.shape}"
    else:
        values = f"{int(np.count_nonzero(a != b))} of {a.size} pixel values differ"
    return (f"duplicate slice position (0020,0032) ImagePositionPatient = {list(kept.ipp)} in "
            f"{_name(kept, name_of)} and {_name(dropped, name_of)} with different pixels ({values}"
            f"{'; ' + ', '.join(what) if what else ''}) and no temporal/echo tag to separate them")


def _padding_mask(raw: np.ndarray, slices: list[list[Slice]], fmts: dict[str, PixelFormat]) -> np.ndarray | None:
    """Where the stored values are PixelPaddingValue (per source file), or ``None`` when nowhere."""
    mask: np.ndarray | None = None
    for t, stack in enumerate(slices):
        for k, s in enumerate(stack):
            m = fmts[s.path].padding_mask(raw[t, k])
            if m is not None and m.any():
                if mask is None:
                    mask = np.zeros(raw.shape, dtype=bool)
                mask[t, k] = m
    return mask


def _fill_padding(data: np.ndarray, mask: np.ndarray) -> float:
    """Padding policy: padded pixels take the lowest real (non-padding) value of the volume.

    PixelPaddingValue marks pixels outside the reconstructed field of view (e.g.
    -2000 or 63536 in CT); rescaled it would be a fake intensity (-3024 HU) and
    the resampling fill. The lowest acquired value (air in CT, background in MR)
    is a value the volume already holds, so intensity statistics and
    interpolation at the field-of-view edge stay physical. All padding: 0.
    """
    real = data[~mask]
    value = real.min() if real.size else 0
    data[mask] = value
    return float(value)


def _rescale(raw: np.ndarray, slices: list[list[Slice]]) -> np.ndarray:
    """Stored values -> modality values, integer when the rescale is, else float32.

    Integral slopes and intercepts keep an integer type: int16 when the values fit,
    uint16 for non-negative values up to 65535, int32 beyond; float32 otherwise.
    """
    slope = np.array([[s.slope for s in st] for st in slices], dtype=np.float64)
    icpt = np.array([[s.intercept for s in st] for st in slices], dtype=np.float64)
    integral = np.all(slope == np.round(slope)) and np.all(icpt == np.round(icpt))
    if integral and raw.dtype.kind in "iu":
        lo, hi = int(raw.min()), int(raw.max())
        ends = [lo * slope.min(), lo * slope.max(), hi * slope.min(), hi * slope.max()]
        lo_v, hi_v = min(ends) + icpt.min(), max(ends) + icpt.max()
        target = next((np.dtype(d) for d, a, b in ((np.int16, -32768, 32767), (np.uint16, 0, 65535),
                                                   (np.int32, -2**31, 2**31 - 1)) if lo_v >= a and hi_v <= b), None)
        if target is not None:
            if np.all(slope == 1) and np.all(icpt == icpt.flat[0]) and target == np.int16:
                if raw.dtype == np.int16:
                    out = raw
                elif raw.dtype == np.uint16 and hi <= 32767:
                    out = raw.view(np.int16)  # same values, no 300 MB copy (raw is ours to modify)
                else:
                    out = (raw if raw.dtype.itemsize <= 2 else raw.astype(np.int32)).astype(np.int16)
                if icpt.flat[0]:
                    out += np.int16(icpt.flat[0])
                return out
            if np.all(slope == 1) and np.all(icpt == 0) and raw.dtype == target:
                return raw
            work = np.dtype(np.int32 if target.itemsize <= 2 else np.int64)  # exact for the checked range
            wide = np.add(np.multiply(raw.astype(work), slope.astype(work)[..., None, None]),
                          icpt.astype(work)[..., None, None])
            return wide.astype(target)
    real = np.dtype(np.float64 if raw.dtype == np.float64 else np.float32)  # double pixels keep their precision
    return (raw.astype(real) * slope.astype(real)[..., None, None]
            + icpt.astype(real)[..., None, None])


def resample_stack(stack: np.ndarray, grid: Grid) -> np.ndarray:
    """Resample one timepoint ``(k, row, col)`` onto the planned orthogonal, regular grid.

    Each source slice is a plane perpendicular to the normal; a tilted stack only
    shifts in-plane from slice to slice. Shifting every slice by its offset puts
    it on the output's in-plane grid exactly (the grid is wide enough for every
    slice's whole field of view, so nothing is cropped); linear interpolation
    between the two neighbouring slices along the normal then gives each output
    slice. Voxels outside the acquired field of view get the stack's minimum
    (padding has already been replaced by the lowest real value).
    """
    from scipy import ndimage

    integer = np.issubdtype(stack.dtype, np.integer)
    n_src, src_ny, src_nx = stack.shape
    fill = float(stack.min())
    if grid.shifted or (grid.ny, grid.nx) != (src_ny, src_nx):
        work = np.empty((n_src, grid.ny, grid.nx), dtype=np.float32)
        i0, j0 = grid.lattice
        for k, (off_r, off_c) in enumerate(grid.offsets):
            # Output pixel (j, i) of slice k is source pixel (j + j0 - off_c/dy, i + i0 - off_r/dx).
            # Within a source pixel's footprint (half a pixel past the edge centres) the edge value
            # holds; beyond it, the fill: never a blend of the fill with real pixels.
            src_pos = (j0 - off_c / grid.dy, i0 - off_r / grid.dx)
            ndimage.affine_transform(stack[k].astype(np.float32), np.ones(2), offset=src_pos,
                                     output_shape=(grid.ny, grid.nx), output=work[k], order=1, mode="nearest")
            jj = np.arange(grid.ny) + src_pos[0]
            ii = np.arange(grid.nx) + src_pos[1]
            work[k][(jj < -0.5 - 1e-3) | (jj > src_ny - 0.5 + 1e-3), :] = fill
            work[k][:, (ii < -0.5 - 1e-3) | (ii > src_nx - 0.5 + 1e-3)] = fill
    else:
        work = stack.astype(np.float32)
    out = np.empty((len(grid.out_d), grid.ny, grid.nx), dtype=np.float32)
    pos = np.interp(grid.out_d, grid.src_d, np.arange(len(grid.src_d), dtype=np.float64))
    for k, p in enumerate(pos):
        lo = min(int(np.floor(p)), len(grid.src_d) - 1)
        w = p - lo
        out[k] = work[lo] if w < 1e-6 or lo + 1 >= len(grid.src_d) else (1 - w) * work[lo] + w * work[lo + 1]
    if integer:
        return np.rint(out).astype(stack.dtype)
    return out


def write_nifti(
    data: np.ndarray, grid: Grid, path: str | os.PathLike[str], *, tr_s: float | None = None, fsync: bool = True
) -> Path:
    """Write ``data`` atomically as gzipped NIfTI-1, sform and qform set (code 1, scanner), no PHI.

    The gzip stream uses ISA-L (``isal``, several times faster than zlib at the same
    ratio) when installed, on several threads for large volumes (:func:`gzip_threads`);
    the gzip header has no file name and mtime 0, so the same volume always gives the
    same bytes (whatever the number of threads or CPUs).
    """
    payload = np.asfortranarray(data)
    header = nifti1_header(payload.shape, payload.dtype, grid.affine_ras, descrip=DESCRIP,
                           tr_s=tr_s if data.ndim == 4 else None)
    out = Path(path)
    threads = gzip_threads(payload.nbytes)
    with atomic_path(out, suffix=".nii.gz", fsync=fsync) as tmp, open(tmp, "wb") as raw, \
            (_gzip_threaded.open(raw, "wb", compresslevel=COMPRESSLEVEL, threads=threads) if threads else
             _gzip.GzipFile(filename="", mode="wb", compresslevel=COMPRESSLEVEL, fileobj=raw, mtime=0)) as fh:
        fh.write(header)
        flat = payload.ravel(order="F").data.cast("B")
        # In slices: small compressed buffers are reused, not 100 MB of fresh pages.
        for start in range(0, len(flat), WRITE_CHUNK):
            fh.write(flat[start:start + WRITE_CHUNK])
    return out
