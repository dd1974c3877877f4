"""Legal files the header reader must not call damaged (issue 27, item 4).

Elements after the pixel data (DataSetTrailingPadding (FFFC,FFFC), a digital signature
(FFFA,FFFA)) are legal after encapsulated and native PixelData; files of classes without
pixel data (raw data, vendors' private classes) are not truncated images. Oracles: pydicom
decoding the pixels of the untouched vendor file (pydicom's own test files), and truncation
done by cutting real files at known byte offsets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import imaging.dicom.header as header
from imaging.dicom.pixels import read_file_frames
from imaging.keys import Pseudonymizer
from imaging.pipelines.ingest import ingest
from tests.unit.test_ingest_fidelity import assert_volume_is_pydicoms

PS = Pseudonymizer(b"unit-test-secret-0123456789")
# Real files of other writers: RLE, JPEG-LS, JPEG 2000 (one with a delimiter-like byte run in its
# codestream), and native CT. The MR_small* and CT_small files already end with their own
# (FFFC,FFFC) padding ("as_is": the RLE one was refused as truncated before).
COMPRESSED = ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]
DELIMITER_INSIDE = "JPEG2000-embedded-sequence-delimiter.dcm"
NATIVE = "CT_small.dcm"


def _signature() -> Dataset:
    item = Dataset()  # PS3.3 C.12.1.1.3: what a signing exporter appends at the end of the data set
    item.MACIDNumber = 1
    item.DigitalSignatureUID = generate_uid()
    item.DigitalSignatureDateTime = "20240101120000"
    item.CertificateType = "X509_1993_SIG"
    item.CertificateOfSigner = b"\x30\x82" + bytes(62)
    item.Signature = bytes(128)
    return item


def _with_trailer(src: str, dest: Path, trailer: str) -> Path:
    ds = pydicom.dcmread(get_testdata_file(src))
    if trailer in ("padding", "both"):
        ds.add_new(0xFFFCFFFC, "OB", bytes(256))
    if trailer in ("signature", "both"):
        ds.DigitalSignaturesSequence = [_signature()]
    ds.save_as(dest, enforce_file_format=True)
    if trailer != "as_is" and ds.file_meta.TransferSyntaxUID.is_compressed:
        data = dest.read_bytes()  # the delimiter is no longer the file's last element
        assert data.rfind(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") < len(data) - 8
    return dest


@pytest.mark.parametrize("trailer", ["as_is", "padding", "signature", "both"])
@pytest.mark.parametrize("name", [*COMPRESSED, DELIMITER_INSIDE, NATIVE])
def test_elements_after_pixel_data_are_legal(tmp_path: Path, name: str, trailer: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = _with_trailer(name, tmp_path / "f.dcm", trailer)
    row = header.header_row(str(path))
    assert row["kind"] == "dicom" and "error" not in row, row.get("error")
    back = pydicom.dcmread(path)  # pydicom reads the trailer as trailer, the pixels as pixels
    assert 0xFFFCFFFC in back or trailer not in ("padding", "both")
    assert ("DigitalSignaturesSequence" in back) == (trailer in ("signature", "both"))
    if name == DELIMITER_INSIDE:
        return  # a colour secondary capture: header only
    original = pydicom.dcmread(get_testdata_file(name)).pixel_array
    np.testing.assert_array_equal(back.pixel_array, original)
    np.testing.assert_array_equal(read_file_frames(str(path), row, "f.dcm")[0], original)
    monkeypatch.setattr(header, "read_fast", lambda buf, complete=True: None)
    assert header.header_row(str(path)) == row  # pydicom's path agrees


@pytest.mark.parametrize("name", [*COMPRESSED, DELIMITER_INSIDE])
def test_truncated_encapsulated_pixel_data_is_still_caught(tmp_path: Path, name: str) -> None:
    padded = _with_trailer(name, tmp_path / "full.dcm", "both").read_bytes()
    delimiter = padded.rfind(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    row = header.header_row(str(_with_trailer(name, tmp_path / "ok.dcm", "both")))
    first_item = row["pixel_offset"]
    assert padded[first_item:first_item + 4] == b"\xfe\xff\x00\xe0"  # the offset table item
    for cut in (delimiter, delimiter + 4, first_item + 8 + (delimiter - first_item) // 2, first_item + 4):
        (tmp_path / "cut.dcm").write_bytes(padded[:cut])
        row = header.header_row(str(tmp_path / "cut.dcm"))
        assert row["kind"] == "unreadable" and row["error"].startswith("truncated:"), (cut, row.get("error"))
        assert "(7FE0,0010)" in row["error"]


def test_a_damaged_item_tag_is_named(tmp_path: Path) -> None:
    data = bytearray(_with_trailer("MR_small_RLE.dcm", tmp_path / "f.dcm", "padding").read_bytes())
    row = header.header_row(str(tmp_path / "f.dcm"))
    start = row["pixel_offset"]
    second = start + 8 + int.from_bytes(data[start + 4:start + 8], "little")  # the first fragment
    data[second:second + 4] = b"\x08\x00\x16\x00"
    (tmp_path / "bad.dcm").write_bytes(bytes(data))
    row = header.header_row(str(tmp_path / "bad.dcm"))
    assert row["kind"] == "unreadable" and row["error"].startswith("damaged:")
    assert f"(0008,0016) at byte {second}" in row["error"]


def _series_from(name: str, folder: Path, n: int = 3) -> list[Path]:
    """``n`` slices of one series from a real file: geometry and UIDs changed, pixel data untouched."""
    folder.mkdir(parents=True)
    series, study = generate_uid(), generate_uid()
    out = []
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]  # theirs, DERIVED\SECONDARY, is withheld by policy
        ds.ImagePositionPatient = [0.0, 0.0, 4.0 * k]
        ds.add_new(0xFFFCFFFC, "OB", bytes(64))
        ds.DigitalSignaturesSequence = [_signature()]
        ds.save_as(folder / f"im{k}", enforce_file_format=True)
        out.append(folder / f"im{k}")
    return out


def test_compressed_series_with_trailers_ingest_to_pydicoms_pixels(tmp_path: Path) -> None:
    series = {name: _series_from(name, tmp_path / "in" / name.removesuffix(".dcm")) for name in COMPRESSED}
    summary = ingest(tmp_path / "in", tmp_path / "ds", PS, private_dir=tmp_path / "pv", workers=1, progress=False)
    assert summary.counts == {"ok": len(COMPRESSED)}, [(r.status, r.reason) for r in summary.rows]
    assert not summary.failed
    for files in series.values():
        uid = pydicom.dcmread(files[0]).SeriesInstanceUID
        (row,) = [r for r in summary.rows if r.series_key == PS.key(uid, "series")]
        assert_volume_is_pydicoms(tmp_path / "ds" / row.volume_path, files)


def _no_pixels(path: Path, sop_class: str) -> Path:
    """A real MR header under another class, without PixelData (Rows kept, as Philips writes)."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del ds.PixelData
    ds.ImageType = ["ORIGINAL", "PRIMARY"]  # (DERIVED\SECONDARY would be withheld first)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SeriesInstanceUID = ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.add_new(0x20050010, "LO", "Philips MR Imaging DD 001")
    ds.add_new(0x20051132, "OB", bytes(4000))  # an opaque private payload
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


RAW_DATA = "1.2.840.10008.5.1.4.1.1.66"
PHILIPS_PRIVATE = "1.3.46.670589.11.0.0.12.2"  # Philips Private MR Series Data Storage
MR_SPECTROSCOPY = "1.2.840.10008.5.1.4.1.1.4.2"  # Rows/Columns, data in (5600,0020), no PixelData
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def test_classes_without_pixel_data_are_skipped_not_errors(tmp_path: Path) -> None:
    raw = _no_pixels(tmp_path / "in" / "raw" / "r.dcm", RAW_DATA)
    private = _no_pixels(tmp_path / "in" / "priv" / "p.dcm", PHILIPS_PRIVATE)
    mrs = _no_pixels(tmp_path / "in" / "mrs" / "s.dcm", MR_SPECTROSCOPY)
    for path in (raw, private, mrs):
        row = header.header_row(str(path))
        assert row["kind"] == "dicom" and "error" not in row and row["pixel_length"] == 0
        assert header.read_fast(path.read_bytes()) is not None
    summary = ingest(tmp_path / "in", tmp_path / "ds", PS, private_dir=tmp_path / "pv", workers=1, progress=False)
    assert summary.counts == {"skipped": 3} and not summary.failed
    reasons = sorted(r.reason for r in summary.rows)
    assert all("non-image SOP class" in r for r in reasons), reasons
    for sop in (PHILIPS_PRIVATE, RAW_DATA, MR_SPECTROSCOPY):
        assert any(f"'{sop}'" in r for r in reasons), sop


def test_an_image_class_without_pixel_data_is_still_truncated(tmp_path: Path) -> None:
    path = _no_pixels(tmp_path / "in" / "mr" / "m.dcm", MR_IMAGE)
    row = header.header_row(str(path))
    assert row["kind"] == "unreadable" and row["error"].startswith("truncated: no (7FE0,0010) PixelData")
    full = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    cut = data.rfind(b"\xe0\x7f\x10\x00")  # a real file cut exactly before its PixelData element
    (tmp_path / "cut.dcm").write_bytes(data[:cut])
    assert full.SOPClassUID == MR_IMAGE
    row = header.header_row(str(tmp_path / "cut.dcm"))
    assert row["kind"] == "unreadable" and row["error"].startswith("truncated: no (7FE0,0010) PixelData")
    summary = ingest(tmp_path / "in", tmp_path / "ds", PS, private_dir=tmp_path / "pv", workers=1, progress=False)
    assert summary.counts == {"error": 1} and summary.failed
