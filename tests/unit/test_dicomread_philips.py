"""Philips classic MR headers take the fast reader (issue 27, item 6).

Every Philips MR file carries the Real World Value Mapping Sequence (0040,9096) at the top
level and private sequences; the files here are built from the real headers of nibabel's
Philips Achieva test file (imaging.synth.bench). Oracles: pydicom's reading of the same files
(the rows must be identical), the mapping's values as pydicom decodes them, and dcm2niix on
the written volumes.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

import imaging.dicom.header as header
from imaging.dicom.scan import scan
from imaging.keys import Pseudonymizer
from imaging.pipelines.ingest import ingest
from imaging.synth.bench import philips_classic_template, write_philips_export
from tests.fixtures.vendor_mr import dcm2niix

PS = Pseudonymizer(b"unit-test-secret-0123456789")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("philips")
    assert write_philips_export(root / "in", n_files=8, slices=4, matrix=12) == 8
    return root / "in"


def _variants(export: Path, out: Path) -> list[Path]:
    """The export's first file re-encoded the other ways Philips files come: implicit VR, the
    mapping with undefined lengths, no RescaleSlope/Intercept (the mapping gives the values),
    a mapping item without slope (a LUT), an empty mapping."""
    src = sorted(export.rglob("IM*"))[0]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("implicit", "undefined", "no_rescale", "lut_only", "empty"):
        ds = pydicom.dcmread(src)
        seq = ds[0x00409096]
        if name == "implicit":
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        if name in ("undefined", "no_rescale"):
            seq.is_undefined_length = True
            for item in seq.value:
                item.is_undefined_length_sequence_item = True
        if name == "no_rescale":
            del ds.RescaleSlope, ds.RescaleIntercept
            ds.RealWorldValueMappingSequence[0].RealWorldValueSlope = 0.731
            ds.RealWorldValueMappingSequence[0].RealWorldValueIntercept = -12.5
        if name == "lut_only":
            item = ds.RealWorldValueMappingSequence[0]
            del item.RealWorldValueSlope, item.RealWorldValueIntercept
            item.RealWorldValueLUTData = [0.0, 1.0]
        if name == "empty":
            ds.RealWorldValueMappingSequence = []
        path = out / name
        ds.save_as(path, implicit_vr=name == "implicit", little_endian=True, enforce_file_format=True)
        paths.append(path)
    return paths


def test_fast_reader_reads_philips_headers_as_pydicom(export: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted(export.rglob("IM*")) + _variants(export, tmp_path / "var")
    assert all(header.read_fast(p.read_bytes()) is not None for p in paths)  # none sent to pydicom
    fast = [header.header_row(str(p)) for p in paths]
    monkeypatch.setattr(header, "read_fast", lambda buf, complete=True: None)
    slow = [header.header_row(str(p)) for p in paths]
    for p, a, b in zip(paths, fast, slow, strict=True):
        assert a == b, p.name
    by_name = {p.name: r for p, r in zip(paths, fast, strict=True)}
    for p, row in zip(paths, fast, strict=True):
        seq = pydicom.dcmread(p).get("RealWorldValueMappingSequence")
        if not seq or "RealWorldValueSlope" not in seq[0]:
            assert "rwvm" not in row, p.name
        else:  # pydicom's decoding of the first item
            assert row["rwvm"] == [seq[0].RealWorldValueSlope, seq[0].RealWorldValueIntercept]
    assert by_name["no_rescale"]["rwvm"] == [0.731, -12.5]
    assert by_name["IM00001"]["philips_ss"] == pytest.approx(0.0002682503836695105)


def test_a_mapping_cut_short_is_read_from_a_longer_prefix(export: Path) -> None:
    data = sorted(export.rglob("IM*"))[0].read_bytes()
    at = data.find(b"\x40\x00\x96\x90")
    with pytest.raises(header.NeedMore):
        header.read_fast(data[:at + 40], complete=False)
    assert header.read_fast(data)[0]["RealWorldValueMapping"] == [2.1079365079365, 0.0]


def test_scan_counts_the_fast_path(export: Path, tmp_path: Path) -> None:
    enhanced = copy.deepcopy(philips_classic_template())  # a file the fast reader leaves: functional groups
    enhanced.SharedFunctionalGroupsSequence = [pydicom.Dataset()]
    enhanced.save_as(tmp_path / "enh.dcm", enforce_file_format=True)
    stats = scan(export, tmp_path / "a.sqlite", workers=1, progress=False)
    assert (stats.n_read, stats.n_fast) == (8, 8)
    shutil.copytree(export, tmp_path / "mixed")
    shutil.copy(tmp_path / "enh.dcm", tmp_path / "mixed" / "enh.dcm")
    stats = scan(tmp_path / "mixed", tmp_path / "b.sqlite", workers=1, progress=False)
    assert (stats.n_read, stats.n_fast) == (9, 8)
    again = scan(tmp_path / "mixed", tmp_path / "b.sqlite", workers=1, progress=False)
    assert (again.n_read, again.n_fast, again.n_cached) == (0, 0, 9)


@pytest.mark.parametrize("rescale", [True, False])
def test_philips_volumes_match_dcm2niix(export: Path, tmp_path: Path, rescale: bool) -> None:
    src = tmp_path / "in"
    for path in sorted(export.rglob("IM*"))[:4]:  # the first series
        ds = pydicom.dcmread(path)
        if not rescale:  # Philips without RescaleSlope: the mapping's values, as dcm2niix takes them
            del ds.RescaleSlope, ds.RescaleIntercept
            ds.RealWorldValueMappingSequence[0].RealWorldValueSlope = 0.5
            ds.RealWorldValueMappingSequence[0].RealWorldValueIntercept = 3.0
        (src / path.parent.name).mkdir(parents=True, exist_ok=True)
        ds.save_as(src / path.parent.name / path.name, enforce_file_format=True)
    summary = ingest(src, tmp_path / "ds", PS, private_dir=tmp_path / "pv", workers=1, progress=False)
    (ok,) = [r for r in summary.rows if r.status == "ok"]
    ours = nib.load(tmp_path / "ds" / ok.volume_path)
    (ref_path,) = dcm2niix(src, tmp_path / "d2n", "-p", "n")  # displayed values, not Philips' precise ones
    ref = nib.load(ref_path)
    a, b = ours.get_fdata(), ref.get_fdata()
    m = np.linalg.inv(ref.affine) @ ours.affine
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in a.shape], indexing="ij")
    ijk = np.stack([ii, jj, kk, np.ones_like(ii)], -1) @ m[:3].T
    np.testing.assert_allclose(ijk, np.rint(ijk), atol=1e-2)  # the same voxel centres
    idx = np.rint(ijk).astype(int)
    assert a.size == b.size == 12 * 12 * 4  # (dcm2niix orders a sagittal stack its own way)
    np.testing.assert_allclose(a, b[idx[..., 0], idx[..., 1], idx[..., 2]], rtol=1e-5, atol=1e-3)
    if not rescale:
        stored = pydicom.dcmread(sorted((src).rglob("IM*"))[0]).pixel_array.astype(float)
        assert np.isclose(a, stored.min() * 0.5 + 3.0).any()
