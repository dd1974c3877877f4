"""Named tricky inputs, each with its expected result: encodings, multi-frame, 4D, bad files, skips."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from tests.fixtures.datasets import (
    CORONAL,
    WrittenSlice,
    stack_positions,
    write_enhanced,
    write_slices,
)
from tests.unit.test_ingest_geometry import PS, assert_matches_dicom, only_ok, run


def keyed(rel: str) -> str:
    """How a reason names the file ``rel`` (relative to the export): ``file-<keyed hash>``."""
    return "file-" + PS.key(rel, "file")


@pytest.mark.parametrize("ts", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_decode_exactly(tmp_path: Path, ts: str) -> None:
    # 32x32: OpenJPEG refuses images smaller than its default resolution levels.
    slices = write_slices(tmp_path / "in" / "s", stack_positions(4), transfer_syntax=ts, dtype=np.uint16,
                          intercept=-1024.0, shape=(32, 32))
    assert pydicom.dcmread(slices[0].path).file_meta.TransferSyntaxUID == ts
    row = only_ok(run(tmp_path / "in", tmp_path))
    assert_matches_dicom(tmp_path / "ds" / row.volume_path, slices)
    sidecar = (tmp_path / "ds" / row.volume_path.replace(".nii.gz", ".json")).read_text()
    assert pydicom.uid.UID(ts).name in sidecar


def _frames_as_slices(path: Path, frames: np.ndarray, positions, spacing) -> list[WrittenSlice]:
    return [WrittenSlice(path, tuple(p), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), spacing, frames[k], 1.0, 0.0)
            for k, p in enumerate(positions)]


def test_enhanced_multiframe_placed_frame_by_frame(tmp_path: Path) -> None:
    pos = stack_positions(5, gap=3.0)
    shuffled = [pos[i] for i in (2, 4, 0, 3, 1)]  # frame order is not slice order
    frames, _ = write_enhanced(tmp_path / "in" / "mf.dcm", shuffled)
    row = only_ok(run(tmp_path / "in", tmp_path))
    assert row.shape == "6x5x5" and row.n_instances == 1
    assert_matches_dicom(tmp_path / "ds" / row.volume_path,
                         _frames_as_slices(tmp_path / "in" / "mf.dcm", frames, shuffled, (0.9, 0.7)))
    src = json.loads((tmp_path / "private" / "sources" / f"{row.series_key}.json").read_text())
    assert [f for _, f in src["frames"]] == [3, 5, 1, 4, 2]  # frame (1-based) of slice k, sorted by position


def test_enhanced_multiframe_4d_by_temporal_position_index(tmp_path: Path) -> None:
    pos = stack_positions(3)
    frames, _ = write_enhanced(tmp_path / "in" / "mf.dcm", pos + pos, temporal=[1, 1, 1, 2, 2, 2])
    row = only_ok(run(tmp_path / "in", tmp_path))
    assert row.shape == "6x5x3x2" and row.n_timepoints == 2
    for t in range(2):
        assert_matches_dicom(tmp_path / "ds" / row.volume_path,
                             _frames_as_slices(tmp_path / "in" / "mf.dcm", frames[3 * t:3 * t + 3], pos, (0.9, 0.7)),
                             t=t)


def _two_phases(folder: Path) -> tuple[list[WrittenSlice], list[WrittenSlice]]:
    pos = stack_positions(4)
    uid, study = generate_uid(), generate_uid()
    a = write_slices(folder, pos, series_uid=uid, study_uid=study, names=[f"A{k}" for k in range(4)],
                     extra={"TemporalPositionIdentifier": 1}, seed=1)
    b = write_slices(folder, pos[::-1], series_uid=uid, study_uid=study, names=[f"B{k}" for k in range(4)],
                     extra={"TemporalPositionIdentifier": 2}, seed=2)
    return a, b


def test_4d_series_written_as_4d(tmp_path: Path) -> None:
    a, b = _two_phases(tmp_path / "in" / "s")
    row = only_ok(run(tmp_path / "in", tmp_path))
    assert row.shape == "7x6x4x2" and row.n_timepoints == 2 and row.n_instances == 8
    assert nib.load(tmp_path / "ds" / row.volume_path).ndim == 4
    assert_matches_dicom(tmp_path / "ds" / row.volume_path, a, t=0)
    assert_matches_dicom(tmp_path / "ds" / row.volume_path, b, t=1)


def test_4d_series_split_by_config(tmp_path: Path) -> None:
    a, b = _two_phases(tmp_path / "in" / "s")
    rows = sorted((r for r in run(tmp_path / "in", tmp_path, split_4d=True).rows), key=lambda r: r.series_key)
    assert [r.status for r in rows] == ["ok", "ok"]
    assert rows[0].series_key.endswith("_1") and rows[1].series_key.endswith("_2")
    assert_matches_dicom(tmp_path / "ds" / rows[0].volume_path, a)
    assert_matches_dicom(tmp_path / "ds" / rows[1].volume_path, b)


def test_multi_echo_gives_one_volume_per_echo(tmp_path: Path) -> None:
    pos = stack_positions(3)
    uid, study = generate_uid(), generate_uid()
    write_slices(tmp_path / "in" / "s", pos, series_uid=uid, study_uid=study, names=["e1a", "e1b", "e1c"],
                 extra={"EchoNumbers": 1})
    write_slices(tmp_path / "in" / "s", pos, series_uid=uid, study_uid=study, names=["e2a", "e2b", "e2c"],
                 extra={"EchoNumbers": 2})
    rows = run(tmp_path / "in", tmp_path).rows
    assert sorted(r.status for r in rows) == ["ok", "ok"]
    assert {r.shape for r in rows} == {"7x6x3"}


def _sr(path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID, ds.Modality = generate_uid(), generate_uid(), "P", "SR"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_skipped_kinds_have_reasons(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_slices(src / "loc", stack_positions(3), extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    write_slices(src / "sc", stack_positions(3), sop_class="1.2.840.10008.5.1.4.1.1.7")
    write_slices(src / "one", stack_positions(1))  # two slices make a stack (test_volume_two_slices)
    write_slices(src / "mosaic", stack_positions(3), extra={"ImageType": ["ORIGINAL", "PRIMARY", "M", "MOSAIC"]})
    uid, study = generate_uid(), generate_uid()  # a 3-plane scout without the LOCALIZER flag
    for k, iop in enumerate([(1.0, 0, 0, 0, 1.0, 0), CORONAL, (0, 1.0, 0, 0, 0, -1.0)]):
        write_slices(src / "scout", [[0.0, 0.0, 0.0]], iop=iop, series_uid=uid, study_uid=study, names=[f"S{k}"])
    _sr(src / "sr" / "report.dcm")
    write_slices(src / "good", stack_positions(4))
    summary = run(src, tmp_path)
    reasons = sorted(r.reason.split(":")[0] for r in summary.rows if r.status == "skipped")
    assert reasons == ["fewer than 2 slices per stack (1)", "localizer", "localizer",
                       "non-image SOP class", "withheld by rule secondary-capture"]
    # A mosaic is unpacked now; one without its tile count is an error naming file and tag, not a skip.
    (err,) = [r for r in summary.rows if r.status == "error"]
    assert keyed("mosaic/IM0000") in err.reason and "NumberOfImagesInMosaic" in err.reason
    assert summary.counts == {"ok": 1, "skipped": 5, "error": 1}


def test_bad_files_name_file_tag_and_value_and_the_rest_ingests(tmp_path: Path) -> None:
    src = tmp_path / "in"
    good = write_slices(src / "good", stack_positions(4), seed=5)
    trunc = write_slices(src / "trunc", stack_positions(5), seed=6)
    data = trunc[2].path.read_bytes()
    trunc[2].path.write_bytes(data[: len(data) - 20])
    noiop = write_slices(src / "noiop", stack_positions(4))
    ds = pydicom.dcmread(noiop[1].path)
    del ds.ImageOrientationPatient
    ds.save_as(noiop[1].path)
    unk = write_slices(src / "unk", stack_positions(4))
    for s in unk:  # same length as '1.2.840.10008.1.2.1' + NUL padding
        s.path.write_bytes(s.path.read_bytes().replace(b"1.2.840.10008.1.2.1\x00", b"1.2.3.4.5.6.7.8.9.10", 1))
    (src / "notes.txt").write_text("not dicom")
    (src / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 50)
    summary = run(src, tmp_path)
    errors = [r.reason for r in summary.rows if r.status == "error"]
    # Files are named by keyed hash only (folder names may be patient names).
    assert any(keyed("trunc/IM0002") in e and "(7FE0,0010)" in e and "truncated" in e for e in errors)
    assert any(keyed("noiop/IM0001") in e and "(0020,0037) ImageOrientationPatient" in e and "missing" in e
               for e in errors)
    assert any(any(keyed(f"unk/IM000{i}") in e for i in range(5)) and "(0002,0010)" in e
               and "'1.2.3.4.5.6.7.8.9.10'" in e for e in errors)
    assert any(keyed("garbage.dcm") in e for e in errors)
    assert not any("trunc/" in e or "noiop" in e or "garbage" in e or str(src) in e for e in errors)
    ok = [r for r in summary.rows if r.status == "ok"]
    # Without its broken file the truncated series misses a slice: an error row by default
    # (it used to be interpolated into an "ok" volume), not fabricated data.
    assert len(ok) == 1
    assert any("1 missing slice" in e and "uneven=refuse" in e for e in errors)
    good_row = ok[0]
    assert_matches_dicom(tmp_path / "ds" / good_row.volume_path, good)
    assert summary.scan.n_non_dicom == 1 and summary.failed
