"""A real vendor CT (GE, from pydicom's test files) with identifying values planted the way
real exports carry them: attributes, a private tag, a sequence item, patient-named folders,
the 128-byte preamble, a truncated file in its own folder and a CT-class dose screen.
`imaging ingest` and `imaging deid` outputs hold none of them; the de-identified copy keeps
every pixel and position, sets the PS3.15 flags and replaces UIDs consistently.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.sequence import Sequence

from imaging.audit import build_needles, scan_paths
from imaging.deid.export import deidentify_export
from imaging.keys import Pseudonymizer
from imaging.pipelines.ingest import ingest

pytestmark = pytest.mark.integration
VENDOR = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
PLANTED = {
    "PatientName": "Lindqvist^Astrid^Maria",
    "PatientID": "19520314-8842",
    "OtherPatientIDs": "SE-77821945",
    "PatientBirthDate": "19520314",
    "PatientAddress": "Storgatan 12, Umea",
    "InstitutionName": "Norrlands Universitetssjukhus",
    "ReferringPhysicianName": "Berglund^Karin",
    "OperatorsName": "Nyberg^Olof",
    "AccessionNumber": "RAD88213577",
    "StudyID": "CT77213",
    "StationName": "NUS-CT-KARDIO3",
    "ImageComments": "ring Astrid Lindqvist 070-5551234",
}
PRIVATE_VALUE = "Lindqvist Astrid private note"
SEQUENCE_VALUE = "Remiss fran Berglund Karin"
PREAMBLE = b"EXPORTED FOR Lindqvist Astrid 19520314-8842"
FOLDER = "LINDQVIST^ASTRID_19520314-8842"
BAD_FOLDER = "Astrid_trasig_fil"


def _plant(ds: pydicom.Dataset) -> None:
    for key, value in PLANTED.items():
        setattr(ds, key, value)
    ds.private_block(0x0019, "GEMS_ACQU_01", create=True).add_new(0xF1, "LO", PRIVATE_VALUE)
    item = pydicom.Dataset()
    item.RequestedProcedureDescription = SEQUENCE_VALUE
    ds.RequestAttributesSequence = Sequence([item])
    ds.preamble = PREAMBLE.ljust(128, b"\0")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vendor") / "export"
    series = root / FOLDER / "CT5N"
    series.mkdir(parents=True)
    for path in sorted(VENDOR.iterdir()):
        ds = pydicom.dcmread(path)
        _plant(ds)
        ds.save_as(series / path.name, enforce_file_format=True)
    (root / BAD_FOLDER).mkdir()
    bad = root / BAD_FOLDER / "IM1"
    data = (series / "2062").read_bytes()
    bad.write_bytes(data[: len(data) - 100])
    screen = pydicom.dcmread(series / "2062")  # a CT-class dose page: released before
    screen.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    screen.SeriesInstanceUID = pydicom.uid.generate_uid()
    screen.SOPInstanceUID = pydicom.uid.generate_uid()
    screen.file_meta.MediaStorageSOPInstanceUID = screen.SOPInstanceUID
    screen.SeriesDescription = "Dose Report"
    (root / FOLDER / "DOSE").mkdir()
    screen.save_as(root / FOLDER / "DOSE" / "IM1", enforce_file_format=True)
    return root


def _needles(export: Path, *tables: Path):  # type: ignore[no-untyped-def]
    values = [*PLANTED.values(), PRIVATE_VALUE, SEQUENCE_VALUE, PREAMBLE.decode(), "Lindqvist", "Astrid",
              "19520314-8842", "Berglund"]
    return build_needles(values, [t for t in tables if t.is_file()], exports=[export])


def test_planted_values_reach_no_output(planted: Path, tmp_path: Path) -> None:
    ps = Pseudonymizer(b"vendor-ct-test-secret-0123456789")
    summary = ingest(planted, tmp_path / "ds", ps, private_dir=tmp_path / "ds.private", workers=1, progress=False)
    deid = deidentify_export(planted, tmp_path / "deid", ps, link_table=tmp_path / "hospital" / "links.csv",
                             progress=False)
    needles = _needles(planted, tmp_path / "ds.private" / "links.csv", tmp_path / "hospital" / "links.csv")
    assert scan_paths([planted], needles)  # live: the export is full of them
    hits = scan_paths([tmp_path / "ds", tmp_path / "deid"], needles)
    assert hits == [], hits[:20]
    statuses = {(r.status, r.reason.split(":")[0]) for r in summary.rows}
    assert ("skipped", "withheld by rule screen-save") in statuses
    assert any(s == "error" for s, _ in statuses) and any(s == "ok" for s, _ in statuses)
    assert deid.written == 5 and deid.withheld == 2  # the dose screen and the truncated file


def test_deid_keeps_pixels_positions_flags_and_uids(planted: Path, tmp_path: Path) -> None:
    ps = Pseudonymizer(b"vendor-ct-test-secret-0123456789")
    deidentify_export(planted, tmp_path / "deid", ps, progress=False)
    sources = {pydicom.dcmread(p).InstanceNumber: pydicom.dcmread(p) for p in (planted / FOLDER / "CT5N").iterdir()}
    written = [pydicom.dcmread(p) for p in (tmp_path / "deid").rglob("*.dcm")]
    assert len(written) == len(sources)
    for ds in written:
        src = sources[ds.InstanceNumber]
        assert np.array_equal(ds.pixel_array, src.pixel_array)
        assert list(ds.ImagePositionPatient) == list(src.ImagePositionPatient)
        assert list(ds.ImageOrientationPatient) == list(src.ImageOrientationPatient)
        assert ds.PatientIdentityRemoved == "YES"
        assert "113100" in {str(c.CodeValue) for c in ds.DeidentificationMethodCodeSequence}
        assert ds.SOPInstanceUID == ps.uid(src.SOPInstanceUID) != src.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.preamble == bytes(128)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({str(ds.get(keyword)) for ds in written}) == 1, keyword
        assert str(written[0].get(keyword)) == ps.uid(str(next(iter(sources.values())).get(keyword)))
    # dciodvfy (dicom3tools) as the independent judge: de-identification adds no IOD error
    # the vendor file did not already have.
    src_errors, out_errors = _dciodvfy_errors(planted / FOLDER / "CT5N" / "2062"), set()
    for path in (tmp_path / "deid").rglob("*.dcm"):
        out_errors |= _dciodvfy_errors(path)
    assert out_errors <= src_errors, out_errors - src_errors


def _dciodvfy_errors(path: Path) -> set[str]:
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (dicom3tools) must be installed: scripts/system-deps.sh"
    proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=60)
    return {line.split(" - Module=")[0] for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith("Error") and "= <" not in line}
