"""Siemens mosaics: one stored image tiles all slices of a volume (ImageType MOSAIC).

The number of tiles comes from the CSA image header (``NumberOfImagesInMosaic``,
read with nibabel's ``nicom.csareader`` at scan time, see :mod:`imaging.dicom.dims`),
or (0019,100A) when the CSA header is missing. The mosaic is a square grid of
``ceil(sqrt(n))`` tiles per side, filled row by row; tile k is slice k, in
order along the CSA ``SliceNormalVector`` (cross product of the orientation when
absent). ImagePositionPatient of a mosaic is the corner of the whole mosaic
image as if it were one big slice; the position of the first tile follows
nibabel's ``MosaicWrapper.image_position``: shift by half the difference between
the mosaic and tile sizes along the row and column directions. Slice k then lies
``k * spacing`` along the normal (SpacingBetweenSlices, else SliceThickness).
"""

from __future__ import annotations

import math

import numpy as np

from imaging.dicom.index_row import FrameInfo, IndexRow, MosaicTiles, SliceRow, image_size


class MosaicError(ValueError):
    """A mosaic whose tiles cannot be located (message names the tag and value)."""


def mosaic_layout(row: IndexRow) -> tuple[int, int, int, int]:
    """(number of tiles, tiles per side, tile rows, tile columns) of a mosaic index row.

    Raises:
        MosaicError: no tile count, or a mosaic size that is not a whole number of tiles.
    """
    n = (row.get("tkey") or {}).get("mosaic")
    if not isinstance(n, int) or n < 1:
        raise MosaicError("mosaic without the number of tiles (CSA NumberOfImagesInMosaic / (0019,100A))")
    side = math.ceil(math.sqrt(n))
    rows, cols = image_size(row)
    if rows % side or cols % side:
        raise MosaicError(f"mosaic (0028,0010) Rows={rows} (0028,0011) Columns={cols} is not "
                          f"{side}x{side} tiles for NumberOfImagesInMosaic={n}")
    return n, side, rows // side, cols // side


def mosaic_items(row: IndexRow, base: FrameInfo) -> list[FrameInfo]:
    """One frame item (ipp, iop, sp, slope, intercept, t, row) per tile of a mosaic file.

    ``base`` is the file's own item; when its geometry is missing it is returned
    unchanged so the caller reports the missing tag. Each item's ``row`` is the
    file's index row with the tile size and a ``mosaic`` entry for the pixel reader.

    Raises:
        MosaicError: see :func:`mosaic_layout`.
    """
    ipp, iop, sp = base.get("ipp"), base.get("iop"), base.get("sp")
    if not (isinstance(ipp, list) and isinstance(iop, list) and isinstance(sp, list)
            and len(ipp) == 3 and len(iop) == 6 and len(sp) == 2):
        return [base]
    n, side, tile_rows, tile_cols = mosaic_layout(row)
    rows, cols = image_size(row)
    r_dir, c_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    d_row, d_col = float(sp[0]), float(sp[1])
    # nibabel MosaicWrapper.image_position: Q = fliplr(iop) * pix_spacing, times (md_rc - rd_rc) / 2
    first = (np.asarray(ipp, float) + c_dir * d_row * (rows - tile_rows) / 2
             + r_dir * d_col * (cols - tile_cols) / 2)
    t = dict(base.get("t") or {})
    normal = t.pop("csa_normal", None)
    times = t.pop("slice_times", None)  # CSA MosaicRefAcqTimes: tile k's acquisition time (ms)
    if not (isinstance(times, list) and len(times) == n):
        times = None
    if isinstance(normal, list) and len(normal) == 3 and np.linalg.norm(normal) > 0.5:
        nvec = np.asarray(normal, float) / np.linalg.norm(normal)
    else:
        nvec = np.cross(r_dir, c_dir)
    params = row.get("params") or {}
    dz = params.get("SpacingBetweenSlices") or params.get("SliceThickness")
    if not isinstance(dz, (int, float)) or dz <= 0:
        raise MosaicError(f"mosaic without slice spacing: (0018,0088) SpacingBetweenSlices = "
                          f"{params.get('SpacingBetweenSlices')!r}, (0018,0050) SliceThickness = "
                          f"{params.get('SliceThickness')!r}")
    tile_row: SliceRow = {**row, "rows": tile_rows, "cols": tile_cols, "n_frames": n,
                          "mosaic": {"n": n, "side": side, "rows": rows, "cols": cols}}
    return [{"ipp": [float(v) for v in first + k * float(dz) * nvec], "iop": iop, "sp": sp,
             "slope": base.get("slope"), "intercept": base.get("intercept"),
             "t": t if times is None else {**t, "slice_time": times[k]}, "row": tile_row}
            for k in range(n)]


def unmosaic(image: np.ndarray, mosaic: MosaicTiles) -> np.ndarray:
    """The tiles of one mosaic image ``(rows, cols)`` as ``(n, tile rows, tile cols)``."""
    side, n = int(mosaic["side"]), int(mosaic["n"])
    tr, tc = image.shape[0] // side, image.shape[1] // side
    tiles = image.reshape(side, tr, side, tc).transpose(0, 2, 1, 3).reshape(side * side, tr, tc)
    return np.ascontiguousarray(tiles[:n])
