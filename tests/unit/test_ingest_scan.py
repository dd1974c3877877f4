"""Scan: the fast header reader agrees with pydicom; the index is resumable; series run in parallel."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydicom.uid import RLELossless, generate_uid

import imaging.dicom.header as header
from imaging.dicom.scan import scan
from imaging.keys import Pseudonymizer
from imaging.pipelines.ingest import ingest
from tests.fixtures.datasets import stack_positions, write_enhanced, write_slices

PS = Pseudonymizer(b"unit-test-secret-0123456789")


def _corpus(root: Path) -> list[Path]:
    write_slices(root / "ct", stack_positions(3), extra={"KVP": 120.0, "ConvolutionKernel": ["B30f", "X"],
                                                        "EchoNumbers": 1, "DiffusionBValue": 800.0})
    write_slices(root / "mr", stack_positions(3), modality="MR", dtype=__import__("numpy").uint16,
                 extra={"SpecificCharacterSet": "ISO_IR 100", "PatientID": "Ångström-1", "RepetitionTime": 500})
    write_slices(root / "rle", stack_positions(3), transfer_syntax=RLELossless)
    write_enhanced(root / "mf" / "mf.dcm", stack_positions(3))
    # A header longer than the first read (16 kB): the fast reader must grow its buffer.
    write_slices(root / "long", stack_positions(3), extra={"TextValue": "comment " * 5000})  # UT: no length limit
    (root / "text.txt").write_text("hello")
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_fast_reader_gives_the_same_rows_as_pydicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _corpus(tmp_path)
    fast = [header.header_row(str(p)) for p in files]
    assert sum(header.read_fast(p.read_bytes()) is not None for p in files) >= 12  # the fast path was taken
    long_file = next(p for p in files if "long" in p.parts)
    with pytest.raises(header.NeedMore):
        header.read_fast(long_file.read_bytes()[:header.FIRST_READ_BYTES], complete=False)
    monkeypatch.setattr(header, "read_fast", lambda buf, complete=True: None)
    slow = [header.header_row(str(p)) for p in files]
    assert fast == slow
    mr = next(r for p, r in zip(files, fast, strict=True) if "mr" in p.parts)
    assert mr["patient_id"] == "Ångström-1" and mr["params"]["RepetitionTime"] == 500


def test_scan_is_resumable_and_forgets_deleted_files(tmp_path: Path) -> None:
    files = _corpus(tmp_path / "in")
    index = tmp_path / "private" / "index.sqlite"
    first = scan(tmp_path / "in", index, workers=1, progress=False)
    assert (first.n_files, first.n_read, first.n_non_dicom) == (len(files), len(files), 1)
    assert first.n_dicom == len(files) - 1
    files[0].unlink()
    second = scan(tmp_path / "in", index, workers=1, progress=False)
    assert (second.n_read, second.n_cached) == (0, len(files) - 1)
    with sqlite3.connect(index) as con:
        assert con.execute("SELECT COUNT(*) FROM files").fetchone()[0] == len(files) - 1


def test_parallel_series_match_serial(tmp_path: Path) -> None:
    for n in range(9):  # enough series for the worker pool
        write_slices(tmp_path / "in" / f"s{n}", stack_positions(3), series_uid=generate_uid(), seed=n)
    serial = ingest(tmp_path / "in", tmp_path / "a", PS, private_dir=tmp_path / "pa", workers=1, progress=False)
    parallel = ingest(tmp_path / "in", tmp_path / "b", PS, private_dir=tmp_path / "pb", workers=2, progress=False)
    assert serial.counts == parallel.counts == {"ok": 9}
    assert (tmp_path / "a" / "catalog.csv").read_text() == (tmp_path / "b" / "catalog.csv").read_text()
    for row in serial.rows:
        assert (tmp_path / "a" / row.volume_path).read_bytes() == (tmp_path / "b" / row.volume_path).read_bytes()
