"""The hostile-name export of test_hostile_names through `imaging deid` and through an archive (`imaging pull`,
`imaging infer input=URL`).

deid: GE's real 5-slice CT under patient-named folders (apostrophes, quotes, commas, parentheses,
umlauts, Cyrillic, a newline, percent-encoding, a 176-byte component), one instance flagged
BurnedInAnnotation (withheld), one file truncated (unreadable). pull: the same CTs stored in a real
Orthanc whose PatientName, StudyDescription and SeriesDescription carry the names, one instance
damaged in the archive's storage (its study fails), pulled by `imaging pull` and by `imaging infer
input=<DICOMweb>` with a tiny registered model. No piece of any name may reach the de-identified copy,
its deid_audit.json, the pulled export's folder names, transfers.*.csv, the predictions or the
console; `imaging audit OUT --export EXPORT` (identities from the export's headers) agrees, and flags
a planted leak (it is live).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pydicom
import pytest
from mlflow import MlflowClient

from imaging.keys import DEMO_SECRET
from tests.fixtures.orthanc import Orthanc
from tests.integration.test_hostile_names import (
    REPO,
    SERIES,
    UNREADABLE,
    _assert_run_clean,
    _cli,
    _copy_series,
    _file_hits,
    _hits,
    _needles,
    plant_unreadable_and_register,
)

pytestmark = [pytest.mark.integration, pytest.mark.orthanc]
BURNED = ("bad_orientation", 2)  # (role, file index): an instance with burned-in text, withheld by deid


def _oracle(rel: str) -> str:
    """deid's file key of a path from its definition (HMAC-SHA256, b'file' NUL path, 16 hex digits)."""
    return hmac.new(DEMO_SECRET, b"file\x00" + rel.encode(), hashlib.sha256).hexdigest()[:16]


def _audit(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`imaging audit` as a user runs it (argparse, not Hydra: no demo_key)."""
    env = {**os.environ, "IMAGING_ROOT": str(root), "PYTHONPATH": str(REPO), "COLUMNS": "400"}  # no wrapped paths
    return subprocess.run([sys.executable, "-m", "imaging", "audit", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


def _describe(paths: list[Path], role: str) -> None:
    """Descriptions that carry the patient-named folder (as some archives fill them): deid must not keep them.

    (Not the series folder's words: "Thorax" is a body part the clean-descriptors whitelist rightly keeps.)
    """
    patient_folder = SERIES[role][0].split("/")[0]
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyDescription, ds.SeriesDescription = patient_folder, f"{SERIES[role][2]} {patient_folder}"
        ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hostile-deid")
    export = root / "export"
    files = {role: _copy_series(export, role, i) for i, role in enumerate(SERIES)}
    for role, paths in files.items():
        _describe(paths, role)
    burned = pydicom.dcmread(files[BURNED[0]][BURNED[1]])
    burned.BurnedInAnnotation = "YES"
    burned.save_as(files[BURNED[0]][BURNED[1]], enforce_file_format=True)
    previous = mlflow.get_tracking_uri()
    uri = plant_unreadable_and_register(root, export, files)
    yield {"root": root, "export": export, "files": files, "uri": uri, "console": []}
    mlflow.set_tracking_uri(previous)


def test_deid_copy_audit_and_console_hold_no_piece_of_a_name(hostile: dict[str, Any]) -> None:
    root, export = hostile["root"], hostile["export"]
    out, links = root / "deid", root / "deid.private" / "links.csv"
    proc = _cli(hostile, "deid", f"input_dir={export}", f"output_dir={out}", f"link_table={links}", "progress=false")
    console = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), console[-3000:]
    needles = _needles()
    assert _file_hits(export, needles)  # live: the export is full of them
    assert _file_hits(out, needles) == {}
    assert _hits(console.encode(), needles) == [], console[-3000:]
    written = [p for p in out.rglob("*") if p.is_file() and p.name != "deid_audit.json"]
    assert len(written) == 5 * len(SERIES) - 1, sorted(p.name for p in written)  # all but the withheld one
    for path in written:  # the copy keeps no name: the headers as pydicom reads them (not our reader)
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) not in {p for _, _, p in SERIES.values()}
    audit = json.loads((out / "deid_audit.json").read_text(encoding="utf-8"))
    folder, pattern, _ = SERIES[BURNED[0]]
    refused = {f"{folder}/{pattern.format(n=f'{BURNED[1] + 1:04d}')}", UNREADABLE}  # burned-in text, truncated
    # The withheld files are named by key only (the HMAC of the path, computed here from its definition) ...
    assert sorted(w["file_key"] for w in audit["withheld"]) == sorted(_oracle(rel) for rel in refused), audit
    # ... and the private withheld list leads back from the key to the file.
    with (links.parent / "links_withheld.csv").open(encoding="utf-8", newline="") as fh:
        private = {r["file_key"]: r["relative_path"] for r in csv.DictReader(fh)}
    assert private == {_oracle(rel): rel for rel in refused}
    # The link table stays on the private side, owner-only, and it is live (it holds the real IDs).
    assert stat.S_IMODE(links.stat().st_mode) == 0o600 and not links.is_relative_to(out)
    assert "PID-0-ok" in links.read_text(encoding="utf-8")
    # The audit, identities read from the export's own headers: clean here ...
    clean = _audit(root, str(out), "--export", str(export))
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-3000:]
    assert _hits((clean.stdout + clean.stderr).encode(), needles) == []
    # ... and live: one planted name in a copy of the audit log is found, and named without its value.
    planted = root / "planted"
    planted.mkdir()
    (planted / "deid_audit.json").write_text(json.dumps({**audit, "note": "Müller^Jürgen"}), encoding="utf-8")
    leak = _audit(root, str(planted), "--export", str(export))
    assert leak.returncode != 0 and "planted/deid_audit.json" in leak.stdout and "$.note" in leak.stdout, leak.stdout
    assert _hits((leak.stdout + leak.stderr).encode(), needles) == []


@pytest.fixture(scope="module")
def archive(hostile: dict[str, Any], orthanc: Orthanc) -> Iterator[dict[str, Any]]:
    """The three readable CTs in Orthanc; one instance of the refused-orientation study damaged in storage."""
    orthanc.clear()
    stored = [p for role in ("ok", "bad_orientation", "lost_source") for p in hostile["files"][role]]
    orthanc.stow(stored)
    studies = {role: str(pydicom.dcmread(hostile["files"][role][0]).StudyInstanceUID)
               for role in ("ok", "bad_orientation", "lost_source")}
    victim = pydicom.dcmread(hostile["files"]["bad_orientation"][2])
    path = orthanc.storage_file(str(victim.SOPInstanceUID))
    path.write_bytes(path.read_bytes()[:-1000])  # cut inside Pixel Data: the archive cannot serve it
    yield {**hostile, "studies": studies, "orthanc": orthanc}
    orthanc.clear()


def test_pull_names_studies_by_key_and_folders_by_uid(archive: dict[str, Any]) -> None:
    root, orthanc = archive["root"], archive["orthanc"]
    out = root / "pulled"
    studies = ",".join(sorted(archive["studies"].values()))
    proc = _cli(archive, "pull", f"url={orthanc.dicomweb}", f"output_dir={out}", f"study=[{studies}]", "progress=false")
    console = proc.stdout + proc.stderr
    assert proc.returncode == 1, console[-3000:]  # done, the damaged study failed (listed)
    needles = _needles()
    assert _hits(console.encode(), needles) == [], console[-3000:]
    pulled = [p for p in out.rglob("*") if p.is_file()]
    # The export is hospital side: its headers keep the names (live), its folder and file names do not.
    assert _hits(b"".join(p.read_bytes() for p in pulled), needles)
    staged = out.with_name("pulled.partial")  # the failed study's instances wait here for a re-run
    names = [str(p.relative_to(folder)) for folder in (out, staged) for p in folder.rglob("*")]
    assert names and _hits("\n".join(names).encode(), needles) == []
    assert len(pulled) == 10 and all(pydicom.dcmread(p).PatientName for p in pulled)  # hospital side: intact
    assert {p.relative_to(out).parts[0] for p in pulled} == {archive["studies"]["ok"], archive["studies"]["lost_source"]}


def test_infer_from_the_archive_keeps_names_out_of_transfers_and_outputs(archive: dict[str, Any]) -> None:
    root, orthanc, studies = archive["root"], archive["orthanc"], archive["studies"]
    out = root / "pred_archive"
    proc = _cli(archive, "infer", "model=models:/tiny_hostile@champion", f"input={orthanc.dicomweb}",
                f"output_dir={out}", f"study=[{','.join(sorted(studies.values()))}]", "inference.sw_batch_size=1")
    console = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), console[-3000:]
    transfers = sorted(out.glob("transfers.*.csv"))
    assert transfers, sorted(p.name for p in out.iterdir())
    rows = [r for t in transfers for r in csv.DictReader(t.open(encoding="utf-8"))]
    assert any(r.get("status") not in ("ok", "already_present", "") for r in rows), rows  # the damaged study
    needles = _needles()
    assert _hits(console.encode(), needles) == [], console[-3000:]
    assert _file_hits(out, needles) == {}
    for uid in studies.values():  # the transfers name studies by key, not by UID
        assert all(uid not in t.read_text(encoding="utf-8") for t in transfers)
    client = MlflowClient(archive["uri"])
    runs = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
            if r.data.tags.get("imaging.stage") == "infer"]
    assert len(runs) == 1
    for run in runs:
        _assert_run_clean(client, run, needles, root / "artifacts")
    # The audit agrees: the predictions and the MLflow store, identities read from the export's headers.
    clean = _audit(root, str(out), "--export", str(root / "export"), "--mlflow", archive["uri"])
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-3000:]
