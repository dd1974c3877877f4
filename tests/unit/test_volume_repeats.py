"""Repeated slice positions: dropped only when their pixel values are identical (issue 27, item 1).

The fixture is the reported case rebuilt on a real Siemens mosaic (nibabel's
``siemens_dwi_0.dcm.gz``: its CSA header, geometry and 48 tiles): three 12-bit
mosaics that share one SeriesInstanceUID but differ in SeriesNumber and pixel
encoding (unsigned; unsigned with junk high bits; signed with junk high bits).
The oracle for every written volume is nibabel's own Siemens mosaic reader
(``nibabel.nicom.dicomwrappers.MosaicWrapper``: tiles, affine) over pydicom's
stored values (``pixel_array``, which masks/sign-extends BitsStored), each file
read on its own: never our reader.
"""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.fixtures.vendor_mr import NICOM_DATA
from tests.unit.test_ingest_geometry import PS, run

JUNK = 0xA000  # bits 13 and 15: above HighBit 11, neither the value nor its sign extension


def _base() -> Dataset:
    with gzip.open(NICOM_DATA / "siemens_dwi_0.dcm.gz", "rb") as fh:
        return pydicom.dcmread(fh)


def _phantom(seed: int) -> np.ndarray:
    """Smooth 12-bit mosaic pixels (0..4095) with some noise, 896 x 896."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:896, 0:896]
    smooth = 2000 + 1500 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
    return np.clip(smooth + rng.normal(0, 200, smooth.shape), 0, 4095).astype(np.int64)


def write_mosaic(path: Path, base: Dataset, *, series_uid: str, series_number: int, values: np.ndarray,
                 signed: bool = False, junk: bool = False, sop_uid: str | None = None) -> Dataset:
    """One 12-bit mosaic holding ``values`` (stored values), encoded as asked."""
    ds = base.copy()
    ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 1 if signed else 0
    words = (values.astype(np.int64) & 0x0FFF) | (JUNK if junk else 0)
    ds.PixelData = words.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def _reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """nibabel's tiles (rows, cols, slices) and LPS affine of one mosaic file, from pydicom's values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel: its DICOM wrappers are "experimental"
        from nibabel.nicom import dicomwrappers

        w = dicomwrappers.wrapper_from_data(pydicom.dcmread(path))
        return np.asarray(w.get_data(), dtype=np.float64), np.asarray(w.affine)


def assert_same_as_reference(nii: Path, dicom: Path) -> None:
    """Every voxel of ours sits where nibabel puts a tile pixel, and holds that pixel's value."""
    ours = nib.load(nii)
    data = np.asarray(ours.dataobj, dtype=np.float64)
    ref, ref_lps = _reference(dicom)
    assert sorted(data.shape) == sorted(ref.shape)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in data.shape], indexing="ij")
    ras = ours.affine @ np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    rck = (np.linalg.inv(ref_lps) @ lps)[:3]
    np.testing.assert_allclose(rck, np.rint(rck), atol=1e-2)
    r, c, k = np.rint(rck).astype(int)
    np.testing.assert_array_equal(data.ravel(), ref[r, c, k])


def test_three_encodings_of_one_series_uid_are_three_volumes(tmp_path: Path) -> None:
    base, series = _base(), generate_uid()
    files = {
        12: write_mosaic(tmp_path / "in" / "a.dcm", base, series_uid=series, series_number=12, values=_phantom(1)),
        13: write_mosaic(tmp_path / "in" / "b.dcm", base, series_uid=series, series_number=13, values=_phantom(2),
                         junk=True),
        14: write_mosaic(tmp_path / "in" / "c.dcm", base, series_uid=series, series_number=14,
                         values=_phantom(3) - 2048, signed=True, junk=True),
    }
    paths = {12: tmp_path / "in" / "a.dcm", 13: tmp_path / "in" / "b.dcm", 14: tmp_path / "in" / "c.dcm"}
    summary = run(tmp_path / "in", tmp_path)
    assert [r.status for r in summary.rows] == ["ok"] * 3, [(r.status, r.reason) for r in summary.rows]
    for row, number in zip(summary.rows, (12, 13, 14), strict=True):
        assert f"(0020,0011) SeriesNumber {number}" in row.reason and "duplicate" not in row.reason
        assert row.shape == "128x128x48" and row.n_instances == 1 and row.series_number == str(number)
        assert_same_as_reference(tmp_path / "ds" / row.volume_path, paths[number])
    # The signed one really holds negative values (its sign taken from bit 11, not the junk above).
    signed = np.asarray(nib.load(tmp_path / "ds" / summary.rows[2].volume_path).dataobj)
    assert signed.min() < 0 and signed.max() < 2048
    assert files[14].PixelRepresentation == 1


def test_reencoded_copy_with_same_values_is_dropped_and_named(tmp_path: Path) -> None:
    # An exporter's second copy of an instance (same SOPInstanceUID and SeriesNumber), the
    # same stored values with junk above HighBit: a true duplicate, dropped, and said so.
    base, series, sop = _base(), generate_uid(), generate_uid()
    values = _phantom(4)
    write_mosaic(tmp_path / "in" / "a.dcm", base, series_uid=series, series_number=5, values=values, sop_uid=sop)
    write_mosaic(tmp_path / "in" / "copy" / "a.dcm", base, series_uid=series, series_number=5, values=values,
                 sop_uid=sop, junk=True)
    (row,) = run(tmp_path / "in", tmp_path).rows
    assert row.status == "ok", row.reason
    assert "48 duplicate slice(s) at repeated positions (0020,0032) dropped" in row.reason
    assert "identical" in row.reason and "and 43 more" in row.reason
    # Named by key only (folder names may be patient names).
    assert "file-" + PS.key("copy/a.dcm", "file") in row.reason and "copy/a.dcm" not in row.reason
    assert_same_as_reference(tmp_path / "ds" / row.volume_path, tmp_path / "in" / "a.dcm")


def test_same_instance_with_other_values_is_an_error_row_naming_what_differs(tmp_path: Path) -> None:
    # The reported case: the copies kept the SOPInstanceUID, so they were dropped unread.
    base, series, sop = _base(), generate_uid(), generate_uid()
    values = _phantom(5)
    write_mosaic(tmp_path / "in" / "a.dcm", base, series_uid=series, series_number=5, values=values, sop_uid=sop)
    write_mosaic(tmp_path / "in" / "b.dcm", base, series_uid=series, series_number=5, values=values - 2048,
                 sop_uid=sop, signed=True, junk=True)
    summary = run(tmp_path / "in", tmp_path)
    (row,) = summary.rows
    assert row.status == "error" and not row.volume_path and summary.failed
    assert "duplicate slice position (0020,0032)" in row.reason
    assert "(0028,0103) PixelRepresentation 0 vs 1" in row.reason
    assert "the same (0008,0018) SOPInstanceUID" in row.reason and "pixel values differ" in row.reason
    assert sop not in row.reason and "b.dcm" not in row.reason
