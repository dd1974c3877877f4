"""A NIfTI-1 single-file header, written with ``struct`` (no nibabel import on the write path).

Importing nibabel costs ~0.4 s of CPU (it pulls in pydicom), more than writing
hundreds of small volumes; ingest only needs the 348-byte header, so it is built
here after the NIfTI-1 standard (``nifti1.h``, ``nifti_mat44_to_quatern`` in
``nifti1_io.c``). Tests read the result with nibabel and compare sform, qform,
dtype and data.
"""

from __future__ import annotations

import math
import struct

import numpy as np

VOX_OFFSET = 352
# numpy dtype -> (NIfTI datatype code, bits per voxel)
DATATYPES = {
    np.dtype(np.uint8): (2, 8), np.dtype(np.int16): (4, 16), np.dtype(np.int32): (8, 32),
    np.dtype(np.float32): (16, 32), np.dtype(np.float64): (64, 64), np.dtype(np.int8): (256, 8),
    np.dtype(np.uint16): (512, 16), np.dtype(np.uint32): (768, 32),
}
UNITS_MM_SEC = 2 | 8
XFORM_SCANNER = 1


def quatern(affine: np.ndarray) -> tuple[float, float, float, float, np.ndarray]:
    """(b, c, d, qfac, voxel sizes) of the rotation part of ``affine`` (nifti_mat44_to_quatern)."""
    m = np.asarray(affine, float)[:3, :3]
    sizes = np.linalg.norm(m, axis=0)
    sizes[sizes == 0] = 1.0
    r = m / sizes
    u, _, vt = np.linalg.svd(r)  # nearest orthogonal matrix (polar decomposition)
    r = u @ vt
    qfac = 1.0
    if np.linalg.det(r) < 0:
        qfac = -1.0
        r[:, 2] = -r[:, 2]
    a = r[0, 0] + r[1, 1] + r[2, 2] + 1.0
    if a > 0.5:
        a = 0.5 * math.sqrt(a)
        b = 0.25 * (r[2, 1] - r[1, 2]) / a
        c = 0.25 * (r[0, 2] - r[2, 0]) / a
        d = 0.25 * (r[1, 0] - r[0, 1]) / a
    else:
        xd = 1.0 + r[0, 0] - (r[1, 1] + r[2, 2])
        yd = 1.0 + r[1, 1] - (r[0, 0] + r[2, 2])
        zd = 1.0 + r[2, 2] - (r[0, 0] + r[1, 1])
        if xd > 1.0:
            b = 0.5 * math.sqrt(xd)
            c = 0.25 * (r[0, 1] + r[1, 0]) / b
            d = 0.25 * (r[0, 2] + r[2, 0]) / b
            a = 0.25 * (r[2, 1] - r[1, 2]) / b
        elif yd > 1.0:
            c = 0.5 * math.sqrt(yd)
            b = 0.25 * (r[0, 1] + r[1, 0]) / c
            d = 0.25 * (r[1, 2] + r[2, 1]) / c
            a = 0.25 * (r[0, 2] - r[2, 0]) / c
        else:
            d = 0.5 * math.sqrt(zd)
            b = 0.25 * (r[0, 2] + r[2, 0]) / d
            c = 0.25 * (r[1, 2] + r[2, 1]) / d
            a = 0.25 * (r[1, 0] - r[0, 1]) / d
        if a < 0.0:
            b, c, d = -b, -c, -d
    return float(b), float(c), float(d), qfac, sizes


def nifti1_header(shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray, *,
                  descrip: bytes = b"", tr_s: float | None = None) -> bytes:
    """352 bytes: the header plus an empty extension flag; data follow in Fortran order.

    sform and qform both hold ``affine`` with code 1 (scanner); values are unscaled.

    Raises:
        ValueError: a dtype NIfTI-1 cannot hold, or more than 7 dimensions.
    """
    if np.dtype(dtype) not in DATATYPES:
        raise ValueError(f"NIfTI-1 cannot store dtype {dtype}")
    if not 1 <= len(shape) <= 7:
        raise ValueError(f"NIfTI-1 holds 1 to 7 dimensions, not {len(shape)}")
    code, bitpix = DATATYPES[np.dtype(dtype)]
    aff = np.asarray(affine, float)
    b, c, d, qfac, sizes = quatern(aff)
    dim = [len(shape), *shape] + [1] * (7 - len(shape))
    pixdim = [qfac, *sizes, tr_s or 0.0, 0.0, 0.0, 0.0]
    hdr = bytearray(VOX_OFFSET)
    struct.pack_into("<i", hdr, 0, 348)
    hdr[38:39] = b"r"
    struct.pack_into("<8h", hdr, 40, *dim)
    struct.pack_into("<hh", hdr, 70, code, bitpix)
    struct.pack_into("<8f", hdr, 76, *pixdim)
    struct.pack_into("<f", hdr, 108, float(VOX_OFFSET))
    struct.pack_into("<B", hdr, 123, UNITS_MM_SEC)
    hdr[148:148 + min(len(descrip), 79)] = descrip[:79]
    struct.pack_into("<hh", hdr, 252, XFORM_SCANNER, XFORM_SCANNER)
    struct.pack_into("<6f", hdr, 256, b, c, d, *aff[:3, 3])
    struct.pack_into("<12f", hdr, 280, *aff[0], *aff[1], *aff[2])
    hdr[344:348] = b"n+1\x00"
    return bytes(hdr)
