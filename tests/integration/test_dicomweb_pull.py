"""`imaging pull` against a real Orthanc (DICOMweb plugin): query, retrieve, resume, bad input.

Oracle: the synthetic export that was STOWed in, read with pydicom (which
instances of which modality exist), and the Orthanc REST API.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from imaging.dicomweb.client import DicomwebError, DicomwebSettings, check_reachable
from imaging.dicomweb.pull import Puller
from imaging.dicomweb.qido import PullQuery, find_studies
from imaging.errors import UsageError
from imaging.synth import generate
from tests.fixtures.orthanc import ORTHANC_PASSWORD, ORTHANC_USER, Orthanc

pytestmark = [pytest.mark.integration, pytest.mark.orthanc]
REPO = Path(__file__).resolve().parents[2]


def _headers(export: Path) -> list[pydicom.Dataset]:
    files = sorted(p for p in export.rglob("*") if p.is_file() and p.name != "manifest.json")
    out = []
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        ds.filename = str(p)
        out.append(ds)
    return out


@pytest.fixture(scope="module")
def archive(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    export = tmp_path_factory.mktemp("pull-src") / "export"
    generate(export, subjects=1, seed=3, cases=["gantry_tilt"], dicomdir=False)
    headers = _headers(export)
    orthanc.clear()
    orthanc.stow([Path(h.filename) for h in headers])
    yield {"export": export, "headers": headers}
    orthanc.clear()


def _ct_counts(headers: list[pydicom.Dataset]) -> Counter[str]:
    return Counter(str(h.StudyInstanceUID) for h in headers if h.Modality == "CT")


def test_pull_query_modality_resume(orthanc: Orthanc, archive: dict, tmp_path: Path) -> None:
    client = DicomwebSettings(orthanc.dicomweb).client()
    want = _ct_counts(archive["headers"])
    studies = find_studies(client, PullQuery(modality="CT"))
    assert sorted(studies) == sorted(want)  # the MR-only study is not a match
    out = tmp_path / "export"
    summary = Puller(client, out, workers=4, progress=False).pull(studies, modality="CT")
    assert not summary.failed and summary.totals()["fetched"] == sum(want.values())
    pulled = _headers(out)
    assert Counter(str(h.StudyInstanceUID) for h in pulled) == want and {h.Modality for h in pulled} == {"CT"}
    by_sop = {str(h.SOPInstanceUID): h for h in archive["headers"]}
    for h in pulled:  # every file is the instance its path names, intact
        assert Path(h.filename).stem == str(h.SOPInstanceUID)
        assert Path(h.filename).parent.name == str(h.SeriesInstanceUID) == str(by_sop[h.filename.split("/")[-1][:-4]].SeriesInstanceUID)
    assert not list(out.with_name("export.partial").rglob("*.dcm"))
    # Resume: nothing fetched again; a deleted instance is the only one fetched.
    Path(pulled[0].filename).unlink()
    again = Puller(client, out, workers=2, progress=False).pull(studies, modality="CT")
    assert again.totals()["fetched"] == 1 and again.totals()["already_present"] == sum(want.values()) - 1


def test_pull_cli_with_basic_auth_from_env(orthanc_auth: Orthanc, tmp_path: Path, archive: dict) -> None:
    orthanc_auth.stow([Path(h.filename) for h in archive["headers"] if h.Modality == "CT"][:5])
    env = {**os.environ, "PACS_PASSWORD": ORTHANC_PASSWORD, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "export"
    args = [sys.executable, "-m", "imaging", "pull", f"url={orthanc_auth.dicomweb}", f"output_dir={out}",
            "dicomweb.auth.kind=basic", f"dicomweb.auth.username={ORTHANC_USER}",
            "dicomweb.auth.password_env=PACS_PASSWORD", f"paths.root_dir={tmp_path}", "progress=false"]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(out.rglob("*.dcm"))) == 5
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.log"))
    assert ORTHANC_PASSWORD not in done.stdout + done.stderr + logs
    # Without credentials: 401, one line, exit 2, nothing written.
    bad = subprocess.run(args[:6] + [f"paths.root_dir={tmp_path}"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "401" in bad.stderr, bad.stderr


def test_unreachable_and_unauthorized(orthanc_auth: Orthanc, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DicomwebError, match="unreachable"):
        check_reachable(DicomwebSettings(f"http://127.0.0.1:{port}/dicom-web", timeout_s=5).client(), "x")
    with pytest.raises(DicomwebError, match="401"):
        check_reachable(DicomwebSettings(orthanc_auth.dicomweb).client(), "x")
    secret = tmp_path / "token"
    secret.write_text("wrong-token-value\n")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DicomwebError, match="401"):
        check_reachable(DicomwebSettings(orthanc_auth.dicomweb, {"kind": "bearer", "token_file": str(secret)})
                        .client(), "x")
    assert "wrong-token-value" not in caplog.text
    with pytest.raises(UsageError, match="auth.token_env"):
        DicomwebSettings(orthanc_auth.dicomweb, {"kind": "bearer", "token_env": "NO_SUCH_VAR_I17"}).client()


def test_vanished_study_and_truncated_instance(orthanc: Orthanc, archive: dict, tmp_path: Path) -> None:
    """One study deleted after the query, one instance truncated in storage: both reported, the rest pulled."""
    client = DicomwebSettings(orthanc.dicomweb).client()
    studies = find_studies(client, PullQuery())
    assert len(studies) == 3
    ct = sorted(_ct_counts(archive["headers"]))
    gone, damaged = ct[0], ct[1]
    mr = next(s for s in studies if s not in ct)
    victim = next(h for h in archive["headers"] if str(h.StudyInstanceUID) == damaged)
    orthanc_id = orthanc.request("POST", "/tools/lookup", gone.encode())[0]["ID"]  # type: ignore[index]
    orthanc.request("DELETE", f"/studies/{orthanc_id}")
    stored = orthanc.storage_file(str(victim.SOPInstanceUID))
    stored.write_bytes(stored.read_bytes()[:-1000])  # cut inside Pixel Data
    try:
        keys = {gone: "study-gone", damaged: "study-damaged", mr: "study-mr"}
        out = tmp_path / "export"
        summary = Puller(client, out, study_key=keys.__getitem__, progress=False).pull(studies)
        rows = {r.key: r for r in summary.studies}
        assert rows["study-mr"].status == "ok" and (out / mr).is_dir()
        assert rows["study-gone"].status == "error" and "study-gone" in rows["study-gone"].reason
        assert rows["study-damaged"].status == "error" and rows["study-damaged"].n_failed == 1
        assert "study-damaged" in rows["study-damaged"].reason
        for row in rows.values():  # the reasons name keys, never UIDs
            assert gone not in row.reason and damaged not in row.reason
        assert not (out / damaged).exists() and not (out / gone).exists()  # nothing half-written in the export
        staged = list(out.with_name("export.partial").rglob("*.dcm"))
        assert str(victim.SOPInstanceUID) not in {p.stem for p in staged}
        assert len(staged) == rows["study-damaged"].n_instances - 1  # the rest waits for a re-run
    finally:
        orthanc.clear()
        orthanc.stow([Path(h.filename) for h in archive["headers"]])


def test_dimse_c_store_to_orthanc(orthanc: Orthanc, archive: dict) -> None:
    """The DIMSE path (archives without DICOMweb): pynetdicom C-STORE to Orthanc's DICOM port."""
    from imaging.dicomweb.push import c_store

    header = next(h for h in archive["headers"] if h.Modality == "CT")
    sop = str(header.SOPInstanceUID)
    found = orthanc.request("POST", "/tools/lookup", sop.encode())
    orthanc.request("DELETE", f"/instances/{found[0]['ID']}")  # type: ignore[index]
    assert not orthanc.request("POST", "/tools/lookup", sop.encode())
    result = c_store(Path(header.filename), "127.0.0.1", orthanc.dicom_port, orthanc.aet, what="series x")
    assert result.status == "stored", result.reason
    assert orthanc.request("POST", "/tools/lookup", sop.encode())
    bad = c_store(Path(header.filename), "127.0.0.1", 1, "NOPE", what="series x")
    assert bad.status == "error" and "series x" in bad.reason
