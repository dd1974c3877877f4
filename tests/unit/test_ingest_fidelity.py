"""Pixel fidelity and reader agreement.

Oracles: pydicom's own pixel decoding (``Dataset.pixel_array``, which applies
BitsStored) and dcm2niix (``-p y``/``-p n`` for Philips scaling); never the
reader under test. Voxels are found through the written NIfTI affine from each
file's own ImagePositionPatient/ImageOrientationPatient/PixelSpacing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

import imaging.dicom.header as header
from imaging.dicom.pixels import read_file_frames
from imaging.keys import Pseudonymizer
from imaging.pipelines.ingest import ingest
from tests.fixtures.datasets import stack_positions, write_slices

PS = Pseudonymizer(b"unit-test-secret-0123456789")
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
DCM2NIIX = Path(sys.executable).parent / "dcm2niix"  # the pip wheel's binary, beside the interpreter


def run(export: Path, tmp: Path, **kw):
    return ingest(export, tmp / "ds", PS, private_dir=tmp / "private", workers=1, progress=False, **kw)


def voxel_of(img, ds) -> tuple[np.ndarray, np.ndarray, int]:
    """(i, j) index grids and k of every pixel of ``ds`` in ``img``, from the DICOM's own geometry."""
    ipp, iop = np.asarray(ds.ImagePositionPatient, float), np.asarray(ds.ImageOrientationPatient, float)
    sp = np.asarray(ds.PixelSpacing, float)
    rr, cc = np.mgrid[0:ds.Rows, 0:ds.Columns]
    lps = ipp + cc[..., None] * sp[1] * iop[:3] + rr[..., None] * sp[0] * iop[3:]
    ras = np.concatenate([-lps[..., :2], lps[..., 2:], np.ones(lps.shape[:-1] + (1,))], axis=-1)
    ijk = ras @ np.linalg.inv(img.affine).T
    np.testing.assert_allclose(ijk[..., :3], np.rint(ijk[..., :3]), atol=1e-3)
    idx = np.rint(ijk).astype(int)
    ks = np.unique(idx[..., 2])
    assert len(ks) == 1
    return idx[..., 0], idx[..., 1], int(ks[0])


def assert_volume_is_pydicoms(nii: Path, files: list[Path]) -> np.ndarray:
    """Every pixel of every file, decoded by pydicom and rescaled, sits in its voxel; returns the data."""
    img = nib.load(nii)
    data = np.asarray(img.dataobj)
    for f in files:
        ds = pydicom.dcmread(f, force=True)
        if "TransferSyntaxUID" not in ds.file_meta:  # the bare files here were written implicit VR LE
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        i, j, k = voxel_of(img, ds)
        expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        np.testing.assert_array_equal(data[i, j, k], expected)
    return data


def _junk_bits(files, *, signed: bool) -> None:
    """BitsStored 12 in 16 bits, with the 4 unused high bits set to junk in every other pixel."""
    for n, s in enumerate(files):
        ds = pydicom.dcmread(s.path)
        raw = np.frombuffer(ds.PixelData, dtype=np.uint16).copy()
        raw &= 0x0FFF
        if signed and n == 1:
            raw[:5] = 0x0800 | np.arange(5)  # negative 12-bit values (-2048..-2044)
        raw[::2] |= 0xA000
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
        ds.PixelData = raw.tobytes()
        ds.save_as(s.path, enforce_file_format=True)


@pytest.mark.parametrize("signed", [False, True])
def test_junk_high_bits_masked_same_values_both_paths_integer_dtype(tmp_path: Path, signed: bool) -> None:
    files = write_slices(tmp_path / "in" / "s", stack_positions(4), dtype=np.int16 if signed else np.uint16,
                         intercept=-1024.0)
    _junk_bits(files, signed=signed)
    row = header.header_row(str(files[0].path))
    assert row["pixel_offset"] and header.read_fast(files[0].path.read_bytes()) is not None  # fast path
    fast = read_file_frames(str(files[1].path), header.header_row(str(files[1].path)), "f")
    slow = read_file_frames(str(files[1].path), {**header.header_row(str(files[1].path)), "pixel_offset": None}, "f")
    np.testing.assert_array_equal(fast, slow)  # the offset read and pydicom's decoder agree
    np.testing.assert_array_equal(fast[0], pydicom.dcmread(files[1].path).pixel_array)
    (ok,) = [r for r in run(tmp_path / "in", tmp_path).rows if r.status == "ok"]
    nii = tmp_path / "ds" / ok.volume_path
    assert nib.load(nii).get_data_dtype() == np.int16  # not float32
    data = assert_volume_is_pydicoms(nii, [s.path for s in files])
    assert data.max() <= 4095 - 1024 and (data.min() < -1024) == signed


def _pad(files, pad: int, where: slice) -> None:
    for s in files:
        ds = pydicom.dcmread(s.path)
        arr = ds.pixel_array.copy()
        arr[where] = pad
        ds.PixelData = arr.tobytes()
        ds.add_new(0x00280120, "SS" if ds.PixelRepresentation else "US", pad)  # PixelPaddingValue
        ds.save_as(s.path, enforce_file_format=True)


@pytest.mark.parametrize("tilt", [False, True])
def test_padding_never_becomes_fake_hu_nor_the_resampling_fill(tmp_path: Path, tilt: bool) -> None:
    drift = (0.0, 0.6, 0.0) if tilt else (0.0, 0.0, 0.0)
    files = write_slices(tmp_path / "in" / "s", stack_positions(5, gap=2.0, drift=drift), shape=(10, 9),
                         intercept=-1024.0)
    _pad(files, -2000, np.s_[:2, :])  # two rows outside the reconstruction circle
    (ok,) = [r for r in run(tmp_path / "in", tmp_path).rows if r.status == "ok"]
    data = np.asarray(nib.load(tmp_path / "ds" / ok.volume_path).dataobj)
    real = np.concatenate([pydicom.dcmread(s.path).pixel_array[2:].ravel() for s in files]) - 1024.0
    # Policy (docs/ingest.md): padding -> the lowest real value of the volume; so is the resampling fill.
    assert data.min() == real.min()
    assert not np.any(data == -2000 - 1024) and not np.any(data < real.min())
    assert (data == real.min()).sum() >= 2 * 9 * 5
    assert f"90 (0028,0120) PixelPaddingValue pixels set to the lowest real value {real.min():g}" in ok.reason
    if tilt:
        assert "gantry tilt" in ok.reason


def test_padding_value_same_on_both_reader_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = write_slices(tmp_path / "s", stack_positions(3), dtype=np.uint16)
    for s in files:  # implicit VR: PixelPaddingValue is US or SS only by PixelRepresentation
        ds = pydicom.dcmread(s.path)
        ds.add_new(0x00280120, "US", 63536)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(s.path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    signed = write_slices(tmp_path / "t", stack_positions(3), dtype=np.int16)
    _pad(signed, -2000, np.s_[:1, :1])
    paths = [str(s.path) for s in files + signed]
    fast = [header.header_row(p) for p in paths]
    monkeypatch.setattr(header, "read_fast", lambda buf, complete=True: None)
    assert [header.header_row(p) for p in paths] == fast
    assert [r["padding"] for r in fast] == [63536] * 3 + [-2000] * 3


def _philips(tmp: Path, scale: float) -> list:
    extra = {"Manufacturer": "Philips Medical Systems", "RescaleSlope": 2.5, "RescaleIntercept": 0.0}
    files = write_slices(tmp, stack_positions(4, gap=3.0), modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4",
                         dtype=np.uint16, intercept=0.0, slope=2.5, extra=extra, shape=(8, 10))
    for s in files:
        ds = pydicom.dcmread(s.path)
        block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
        block.add_new(0x0E, "FL", scale)
        ds.save_as(s.path, enforce_file_format=True)
    return files


def _dcm2niix(src: Path, out: Path, precise: str) -> nib.Nifti1Image:
    out.mkdir(parents=True)
    subprocess.run([str(DCM2NIIX), "-z", "n", "-b", "n", "-p", precise, "-f", "v", "-o", str(out), str(src)],
                   check=True, capture_output=True, timeout=120)
    (nii,) = sorted(out.glob("*.nii"))
    return nib.load(nii)


@pytest.mark.parametrize("precise", [False, True])
def test_philips_precise_values_match_dcm2niix(tmp_path: Path, precise: bool) -> None:
    files = _philips(tmp_path / "in" / "s", 0.37)
    (ok,) = [r for r in run(tmp_path / "in", tmp_path, philips_precise=precise).rows if r.status == "ok"]
    ours = nib.load(tmp_path / "ds" / ok.volume_path)
    ref = _dcm2niix(tmp_path / "in" / "s", tmp_path / "d2n", "y" if precise else "n")
    ours_data, ref_data = ours.get_fdata(), ref.get_fdata()  # get_fdata applies dcm2niix's scl_slope
    assert ours_data.shape == ref_data.shape
    # Same world position -> same value, whatever voxel order dcm2niix chose.
    m = np.linalg.inv(ref.affine) @ ours.affine
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in ours_data.shape], indexing="ij")
    idx = np.rint(np.stack([ii, jj, kk, np.ones_like(ii)], -1) @ m[:3].T).astype(int)
    np.testing.assert_allclose(ours_data, ref_data[idx[..., 0], idx[..., 1], idx[..., 2]], rtol=1e-5, atol=1e-4)
    stored = pydicom.dcmread(files[0].path).pixel_array
    if precise:
        assert ours.get_data_dtype() == np.float32 and abs(ours_data.max() - stored.max() / 0.37) < 0.5 * ours_data.max()
    else:
        assert ours.get_data_dtype() in (np.int16, np.uint16, np.float32)


# ---------------------------------------------------------------- the two header readers agree

REAL_FILES = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
              "UN_sequence.dcm", "nested_priv_SQ.dcm", "no_meta.dcm", "ExplVR_LitEndNoMeta.dcm",
              "ExplVR_BigEndNoMeta.dcm", "MR_small_padded.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm",
              "meta_missing_tsyntax.dcm", "no_meta_group_length.dcm", "priv_SQ.dcm", "empty_charset_LEI.dcm"]


# An item of undefined length holding (0008,0100) CodeValue in implicit VR, item and sequence delimiters.
UN_SEQUENCE = (b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x08\x00\x00\x01\x02\x00\x00\x001 "
               + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")


def _encodings(root: Path) -> dict[str, list[Path]]:
    """One 3-slice series per encoding, written by pydicom (not by the reader under test)."""
    out: dict[str, list[Path]] = {}
    seq_item = pydicom.Dataset()
    seq_item.CodeValue, seq_item.CodingSchemeDesignator = "T-D4000", "SRT"
    for name, kw in (("implicit", {"implicit_vr": True, "little_endian": True}), ("bigendian", {}),
                     ("deflate", {}), ("bare", {}), ("sequences", {}), ("un_items", {})):
        files = write_slices(root / name, stack_positions(3), seed=len(out), dtype=np.uint16)
        for s in files:
            ds = pydicom.dcmread(s.path)
            ds.AnatomicRegionSequence = [seq_item]
            ds["AnatomicRegionSequence"].is_undefined_length = True  # and its items: delimiters
            seq_item.is_undefined_length_sequence_item = True
            if name == "un_items":  # a private sequence as UN of undefined length: items in implicit VR
                block = ds.private_block(0x0029, "ACME 1.0", create=True)
                block.add_new(0x01, "UN", UN_SEQUENCE)
            if name == "implicit":
                ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            elif name == "bigendian":
                ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
            elif name == "deflate":
                ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            if name == "bigendian":  # OW pixel data is written as given: swap the bytes ourselves
                ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
                pydicom.dcmwrite(s.path, ds, implicit_vr=False, little_endian=False,
                                 force_encoding=True)
            elif name == "bare":
                del ds.file_meta
                ds.preamble = None
                pydicom.dcmwrite(s.path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
            else:
                ds.save_as(s.path, enforce_file_format=True, **kw)
            if name == "un_items":  # pydicom wrote the UN value with its length: make it undefined
                data = s.path.read_bytes()
                head = b"\x29\x00\x01\x10UN\x00\x00" + len(UN_SEQUENCE).to_bytes(4, "little")
                assert head in data
                s.path.write_bytes(data.replace(head, head[:8] + b"\xff\xff\xff\xff", 1))
        out[name] = [s.path for s in files]
    return out


def test_fast_reader_and_pydicom_give_identical_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    series = _encodings(tmp_path / "enc")
    paths = [str(PYDICOM_FILES / f) for f in REAL_FILES] + [str(p) for ps in series.values() for p in ps]
    fast = [header.header_row(p) for p in paths]
    taken = [header.read_fast(Path(p).read_bytes()) is not None for p in paths]
    assert sum(taken) >= 10  # implicit VR, undefined-length sequences, UN items went the fast way
    monkeypatch.setattr(header, "read_fast", lambda buf, complete=True: None)
    slow = [header.header_row(p) for p in paths]
    for p, a, b in zip(paths, fast, slow, strict=True):
        assert a == b, p
    by_path = dict(zip(paths, fast, strict=True))
    bare = by_path[str(series["bare"][0])]
    assert bare["kind"] == "dicom" and bare["ts"] == ImplicitVRLittleEndian and bare["pixel_offset"]
    assert by_path[str(PYDICOM_FILES / "ExplVR_BigEndNoMeta.dcm")]["ts"] == ExplicitVRBigEndian


def test_every_encoding_ingests_to_pydicoms_pixels(tmp_path: Path) -> None:
    series = _encodings(tmp_path / "in")
    summary = run(tmp_path / "in", tmp_path)
    assert summary.counts == {"ok": len(series)}, [(r.status, r.reason) for r in summary.rows]
    vols = {r.n_instances: r for r in summary.rows}
    assert len(vols) == 1
    for files in series.values():
        uid = pydicom.dcmread(files[0], force=True).SeriesInstanceUID
        (row,) = [r for r in summary.rows if r.series_key == PS.key(uid, "series")]
        assert_volume_is_pydicoms(tmp_path / "ds" / row.volume_path, files)



def test_real_philips_enhanced_mprage_matches_dcm2niix(tmp_path: Path) -> None:
    """A real vendor file (nibabel's test data): every voxel equals dcm2niix's displayed values."""
    import gzip

    src = Path(nib.__file__).parent / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.dcm").write_bytes(gzip.decompress(src.read_bytes()))
    (ok,) = [r for r in run(tmp_path / "in", tmp_path).rows if r.status == "ok"]
    ours = nib.load(tmp_path / "ds" / ok.volume_path)
    ref = _dcm2niix(tmp_path / "in", tmp_path / "d2n", "n")
    a, b = ours.get_fdata(), ref.get_fdata()
    m = np.linalg.inv(ref.affine) @ ours.affine
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in a.shape], indexing="ij")
    ijk = np.stack([ii, jj, kk, np.ones_like(ii)], -1) @ m[:3].T
    np.testing.assert_allclose(ijk, np.rint(ijk), atol=1e-3)  # same voxel centres
    idx = np.rint(ijk).astype(int)
    assert a.size == b.size == 256 * 256 * 176
    np.testing.assert_allclose(a, b[idx[..., 0], idx[..., 1], idx[..., 2]], rtol=1e-5, atol=1e-3)


def test_philips_real_world_value_mapping_without_rescale_matches_dcm2niix(tmp_path: Path) -> None:
    files = _philips(tmp_path / "in" / "s", 0.37)
    for s in files:  # no RescaleSlope/Intercept: the Real World Value Mapping gives the values
        ds = pydicom.dcmread(s.path)
        del ds.RescaleSlope, ds.RescaleIntercept
        item = pydicom.Dataset()
        item.RealWorldValueSlope, item.RealWorldValueIntercept = 1.5, -7.0
        item.RealWorldValueFirstValueMapped, item.RealWorldValueLastValueMapped = 0, 4095
        ds.RealWorldValueMappingSequence = [item]
        ds.save_as(s.path, enforce_file_format=True)
    (ok,) = [r for r in run(tmp_path / "in", tmp_path).rows if r.status == "ok"]
    ours = nib.load(tmp_path / "ds" / ok.volume_path)
    ref = _dcm2niix(tmp_path / "in" / "s", tmp_path / "d2n", "n")
    m = np.linalg.inv(ref.affine) @ ours.affine
    a, b = ours.get_fdata(), ref.get_fdata()
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in a.shape], indexing="ij")
    idx = np.rint(np.stack([ii, jj, kk, np.ones_like(ii)], -1) @ m[:3].T).astype(int)
    np.testing.assert_allclose(a, b[idx[..., 0], idx[..., 1], idx[..., 2]], rtol=1e-5, atol=1e-4)
    stored = pydicom.dcmread(files[0].path).pixel_array
    i, j, k = voxel_of(ours, pydicom.dcmread(files[0].path))
    np.testing.assert_allclose(a[i, j, k], stored * 1.5 - 7.0)  # and the DICOM's own mapping
