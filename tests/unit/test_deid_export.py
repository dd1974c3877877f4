"""`deidentify_export` and `imaging deid`: layout, bad input, link table, audit log, secrets."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from imaging.deid.apply import DeidOptions
from imaging.deid.export import AUDIT_NAME, DeidConfigError, deidentify_export
from imaging.keys import Pseudonymizer
from tests.unit.deid_factory import CANARY, SECRET, ct_dataset, write_ct_series

PSEUDO = Pseudonymizer(SECRET)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    write_ct_series(root / f"{CANARY}_patient" / "study", n=3)
    (root / "README.TXT").write_text(f"{CANARY} notes\n")
    (root / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    truncated = ct_dataset()
    truncated.save_as(root / "truncated.dcm", enforce_file_format=True)
    data = (root / "truncated.dcm").read_bytes()
    (root / "truncated.dcm").write_bytes(data[:-40])
    sc = ct_dataset(sop_class="1.2.840.10008.5.1.4.1.1.7")
    sc.save_as(root / "screenshot.dcm", enforce_file_format=True)
    raw = ct_dataset()  # no preamble, no file meta: a bare implicit-VR dataset
    del raw.file_meta
    pydicom.dcmwrite(root / "IM_RAW", raw, implicit_vr=True, little_endian=True)
    return root


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_export_layout_and_bad_input(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = deidentify_export(export, out, PSEUDO, DeidOptions(), progress=False)
    assert summary.files_seen == 8
    assert summary.written == 4  # three slices + the raw dataset
    assert summary.skipped_non_dicom == 1  # README
    assert summary.withheld == 3
    reasons = "\n".join(summary.withheld_reasons)
    assert "unparseable" in reasons and "truncated" in reasons and "Secondary Capture" in reasons
    written = [p for p in _files(out) if p.suffix == ".dcm"]
    assert len(written) == 4
    for path in written:
        rel = path.relative_to(out)
        assert len(rel.parts) == 4 and rel.parts[0].startswith("SUBJ-")
        assert CANARY not in str(rel)
        ds = pydicom.dcmread(path)
        assert ds.PatientID == rel.parts[0] and ds.PatientIdentityRemoved == "YES"
        assert CANARY.encode() not in path.read_bytes()
    # Nothing of the bad input was copied through.
    assert not any(p.name in ("broken.dcm", "truncated.dcm", "screenshot.dcm") for p in _files(out))
    audit = json.loads((out / AUDIT_NAME).read_text())
    assert audit["files"]["withheld"] == 3 and len(audit["withheld"]) == 3
    assert all(set(w) == {"index", "file_key", "reason"} for w in audit["withheld"])
    text = (out / AUDIT_NAME).read_text()
    assert CANARY not in text and "broken.dcm" not in text and "screenshot.dcm" not in text
    assert audit["attributes"]["PatientName"]["replaced"] == 4


def test_same_secret_is_idempotent_other_secret_differs(export: Path, tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    c = tmp_path / "c"
    deidentify_export(export, a, PSEUDO, progress=False)
    deidentify_export(export, b, PSEUDO, progress=False)
    other = Pseudonymizer(b"a-different-secret-0123456789abc")
    deidentify_export(export, c, other, progress=False)
    with pytest.raises(DeidConfigError, match="another project secret"):
        deidentify_export(export, a, other, progress=False)
    names_a = [p.relative_to(a) for p in _files(a)]
    assert names_a == [p.relative_to(b) for p in _files(b)]
    for pa in _files(a):
        if pa.suffix == ".dcm":
            assert pa.read_bytes() == (b / pa.relative_to(a)).read_bytes()
    names_c = {p.relative_to(c) for p in _files(c) if p.suffix == ".dcm"}
    assert names_c and names_c.isdisjoint(set(names_a))


def test_link_table_private_and_refused_inside_output(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DeidConfigError, match="inside output_dir"):
        deidentify_export(export, out, PSEUDO, link_table=out / "links.csv", progress=False)
    with pytest.raises(DeidConfigError, match="must not contain"):
        deidentify_export(export, export / "out", PSEUDO, progress=False)
    links = tmp_path / "private" / "links.csv"
    deidentify_export(export, out, PSEUDO, link_table=links, progress=False)
    assert stat.S_IMODE(links.stat().st_mode) == 0o600
    rows = links.read_text().splitlines()
    assert rows[0] == "kind,original,pseudonym"
    kinds = {r.split(",")[0] for r in rows[1:]}
    assert kinds == {"patient_id", "accession_number", "study_instance_uid", "series_instance_uid"}
    withheld = links.with_name("links_withheld.csv")
    assert stat.S_IMODE(withheld.stat().st_mode) == 0o600 and "broken.dcm" in withheld.read_text()
    assert not (out / "links.csv").exists()


def test_no_link_table_unless_asked(export: Path, tmp_path: Path) -> None:
    summary = deidentify_export(export, tmp_path / "out", PSEUDO, progress=False)
    assert summary.link_table is None
    assert not list(tmp_path.rglob("*links*"))


def _cli(*args: str, logs: Path) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "IMAGING_DEID_SECRET"}
    return subprocess.run(
        [sys.executable, "-m", "imaging.cli", "deid", *args, "progress=false", f"hydra.run.dir={logs}"],
        capture_output=True, text=True, cwd=REPO, env=full_env, timeout=120,
    )  # fmt: skip


def test_cli_refuses_without_secret_and_runs_with_demo_key(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _cli(f"input_dir={export}", f"output_dir={out}", logs=tmp_path / "logs")
    assert res.returncode == 2 and "no project secret" in res.stdout + res.stderr
    assert not out.exists()
    res = _cli(
        f"input_dir={export}", f"output_dir={out}", "demo_key=true", logs=tmp_path / "logs"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "written (de-identified)" in res.stdout and CANARY not in res.stdout
    assert json.loads((out / AUDIT_NAME).read_text())["demo_key"] is True
