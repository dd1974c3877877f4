"""Our NIfTI-1 writer, read back by nibabel: same affine in sform and qform, dtype, data, no PHI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imaging.dicom.geometry import Grid
from imaging.dicom.volume import write_nifti


def _grid(rot: np.ndarray, spacing: tuple[float, float, float], origin: np.ndarray, shape) -> Grid:
    n = len(range(shape[2]))
    return Grid(row_dir=rot[:, 0], col_dir=rot[:, 1], normal=rot[:, 2], dx=spacing[0], dy=spacing[1],
                nx=shape[0], ny=shape[1], origin=origin, src_d=np.arange(n) * spacing[2],
                offsets=np.zeros((n, 2)), dz=spacing[2], out_d=np.arange(n) * spacing[2])


def _rotations(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = [np.eye(3), np.diag([-1.0, 1.0, -1.0]), np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]])]
    for _ in range(n):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        out.append(q * np.sign(np.diag(r)))
    return out


@pytest.mark.parametrize("rot", _rotations(12))
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_header_read_back_by_nibabel(tmp_path: Path, rot: np.ndarray, dtype) -> None:
    rot = rot.copy()
    if np.linalg.det(rot) < 0:  # a DICOM stack's normal is row x col: right-handed in LPS
        rot[:, 2] = -rot[:, 2]
    grid = _grid(rot, (0.7, 0.9, 2.5), np.array([-100.0, 20.0, 33.3]), (5, 4, 3))
    data = (np.arange(60).reshape(5, 4, 3) * 3).astype(dtype)
    path = write_nifti(data, grid, tmp_path / "v.nii.gz")
    img = nib.load(path)
    sform, scode = img.header.get_sform(coded=True)
    qform, qcode = img.header.get_qform(coded=True)
    assert (scode, qcode) == (1, 1)
    np.testing.assert_allclose(sform, grid.affine_ras, atol=1e-4)
    np.testing.assert_allclose(qform, grid.affine_ras, atol=1e-4)
    assert img.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert img.header["descrip"].tobytes().rstrip(b"\0") == b"imaging ingest"


def test_4d_and_same_bytes_every_time(tmp_path: Path) -> None:
    grid = _grid(np.eye(3), (1.0, 1.0, 2.0), np.zeros(3), (3, 3, 2))
    data = np.arange(36, dtype=np.int16).reshape(3, 3, 2, 2)
    a = write_nifti(data, grid, tmp_path / "a.nii.gz", tr_s=2.5)
    b = write_nifti(data, grid, tmp_path / "b.nii.gz", tr_s=2.5)
    assert a.read_bytes() == b.read_bytes()
    img = nib.load(a)
    assert img.shape == (3, 3, 2, 2) and img.header["pixdim"][4] == pytest.approx(2.5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)


def test_large_volumes_deflate_on_threads_same_bytes_as_one(tmp_path: Path, monkeypatch) -> None:
    """Above the threshold the gzip stream is written by several threads: nibabel and Python's
    gzip read it, and the bytes do not depend on the number of threads."""
    import gzip

    import imaging.dicom.volume as volume

    monkeypatch.setattr(volume, "THREADED_MIN_BYTES", 1 << 20)
    monkeypatch.setattr(volume, "usable_cpus", lambda: 3)
    grid = _grid(np.eye(3), (1.0, 1.0, 2.0), np.zeros(3), (128, 128, 48))
    data = (np.random.default_rng(3).normal(0, 300, (128, 128, 48))).astype(np.int16)  # 1.5 MiB
    assert volume.gzip_threads(data.nbytes) == 3 and volume.gzip_threads(data.nbytes // 4) == 0
    threaded = write_nifti(data, grid, tmp_path / "t.nii.gz").read_bytes()
    monkeypatch.setattr(volume, "THREADED_MIN_BYTES", 1 << 40)
    single = write_nifti(data, grid, tmp_path / "s.nii.gz").read_bytes()
    assert threaded[4:8] == b"\0\0\0\0" and not threaded[3] & 0x08  # mtime 0, no file name
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "t.nii.gz").dataobj), data)
    assert gzip.decompress(threaded) == gzip.decompress(single)
    monkeypatch.setattr(volume, "THREADED_MIN_BYTES", 1 << 20)
    for cpus in ({0, 1}, {0}):  # the same bytes on any number of CPUs
        monkeypatch.setattr(volume, "usable_cpus", lambda cpus=cpus: len(cpus))
        assert write_nifti(data, grid, tmp_path / "t2.nii.gz").read_bytes() == threaded
