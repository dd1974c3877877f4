"""One series, several pixel encodings: each slice decoded by its own format (issue 27, item 2).

Built from a real CT (pydicom's ``CT_small.dcm``): its pixels on several slice
positions, part of them re-encoded the way exporters do (unsigned 12-bit with
junk above HighBit and intercept -1024, beside signed 16-bit holding the HU with
intercept 0; one slice RLE-compressed). Same HU everywhere; the expected value of
every voxel is pydicom's own ``pixel_array * RescaleSlope + RescaleIntercept`` of
the file that holds it, placed by that file's ImagePositionPatient.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless, generate_uid

from tests.unit.test_ingest_geometry import only_ok, run


def _hu() -> np.ndarray:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return ds.pixel_array.astype(np.int64) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)


def write_slice(path: Path, k: int, hu: np.ndarray, encoding: str, series: str, study: str) -> None:
    """Slice ``k`` (5 mm apart) of one series holding ``hu``, stored as ``encoding``."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds[0xFFFCFFFC]  # its DataSetTrailingPadding after PixelData is another item of issue 27
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [-158.135803, -179.035797, -75.7 + 5.0 * k]
    if encoding.startswith("u12"):  # stored = HU + 1024 in 12 bits, junk bits above HighBit
        del ds.PixelPaddingValue  # -2000 is no unsigned value: an exporter re-encoding drops it
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        words = (hu + 1024) | (0x5000 if encoding == "u12_junk" else 0)
        ds.PixelData = words.astype(np.uint16).tobytes()
    else:  # signed 16-bit holding the HU themselves
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = hu.astype(np.int16).tobytes()
        if encoding == "s16_rle":
            ds.compress(RLELossless, hu.astype(np.int16))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def assert_each_slice_is_its_file(nii: Path, files: list[Path]) -> None:
    """Voxel (i, j, k) holds pixel (row j, column i) of the file at slice k's position, rescaled."""
    img = nib.load(nii)
    data = np.asarray(img.dataobj)
    inv = np.linalg.inv(img.affine)
    for path in files:
        ds = pydicom.dcmread(path)
        lps = np.asarray(ds.ImagePositionPatient, float)
        i, j, k = np.rint(inv @ np.array([-lps[0], -lps[1], lps[2], 1.0]))[:3].astype(int)
        assert (i, j) == (0, 0)
        expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(data[:, :, k].T.astype(np.float64), expected, err_msg=path.name)


@pytest.mark.parametrize("encodings", [
    ["u12", "s16", "u12_junk", "s16", "u12_junk", "s16_rle"],  # the first slice unsigned 12-bit
    ["s16", "u12_junk", "u12", "s16_rle", "u12_junk", "s16"],  # the first slice signed 16-bit
])
def test_mixed_unsigned_12_and_signed_16_slices_keep_their_values(tmp_path: Path, encodings: list[str]) -> None:
    hu, series, study = _hu(), generate_uid(), generate_uid()
    files = []
    for k, enc in enumerate(encodings):
        path = tmp_path / "in" / f"IM{k:02d}"
        write_slice(path, k, hu + 7 * k, enc, series, study)  # a different image on every slice
        files.append(path)
    row = only_ok(run(tmp_path / "in", tmp_path))
    assert row.shape == "128x128x6" and row.n_instances == 6
    nii = tmp_path / "ds" / row.volume_path
    assert_each_slice_is_its_file(nii, files)
    # Air stays air: nothing was masked by another slice's 12 bits (HU -1024 .. ~1200 here).
    data = np.asarray(nib.load(nii).dataobj)
    assert data.min() == (hu.min()) and data.dtype == np.int16
