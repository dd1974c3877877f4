"""Where real exports leak beyond the attributes: folder names, preamble, private items, bad files.

The synthetic export names patient folders after the patient, writes a canary
preamble, a private sequence with canaries inside and one truncated file. Ingest
and deid outputs (and their logs) audit to zero hits against the canary token, the
manifest, the private link tables and the export's own folder names; the private
``names.jsonl`` still leads an engineer from a catalog key to the bad file.
"""

from __future__ import annotations

import csv
import json
import logging
import stat
from pathlib import Path

import pydicom
import pytest

from imaging.audit import build_needles, scan_paths
from imaging.audit.needles import folder_names
from imaging.deid.export import deidentify_export
from imaging.keys import Pseudonymizer
from imaging.pipelines.ingest import NAMES_FILE, ingest
from imaging.synth.canaries import CANARY_TOKEN

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deid_out(synth_export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("deid-leaks")
    log_file = root / "deid.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    old = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        deidentify_export(synth_export, root / "out", Pseudonymizer.from_config(demo_key=True),
                          link_table=root / "private" / "links.csv", progress=False)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(old)
        handler.close()
    return root / "out", root / "private" / "links.csv", log_file.read_text()


def _needles(export: Path, *tables: Path):  # type: ignore[no-untyped-def]
    return build_needles([CANARY_TOKEN], [t for t in tables if t.is_file()], [export / "manifest.json"], [export])


def test_needles_are_live(synth_export: Path) -> None:
    names = folder_names(synth_export)
    assert any(n.startswith("ZZDOE") for n in names)
    needles = _needles(synth_export)
    with open(next(synth_export.rglob("IM000001")), "rb") as fh:
        assert list(needles.find(fh.read(128).decode("latin-1")))  # the preamble carries a canary
    # A catalog written the old way (relative paths in reasons) is found by folder name alone.
    folder_only = build_needles([], exports=[synth_export])
    rel = next(synth_export.rglob("IM000001")).relative_to(synth_export).as_posix()
    assert list(folder_only.find(f"file '{rel}': truncated"))


def test_ingest_outputs_and_logs_audit_clean(ingested_dataset, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    d = ingested_dataset
    needles = _needles(d.export, d.private / "links.csv")
    hits = scan_paths([d.dataset], needles)
    assert hits == [], hits[:20]
    # The bad rows name files by key, and the private names file finds them again.
    rows = list(csv.DictReader((d.dataset / "catalog.csv").open()))
    bad = [r for r in rows if r["status"] == "error" and "file file-" in r["reason"]]
    assert bad, "the truncated file has its own error row"
    names_path = d.private / NAMES_FILE
    assert stat.S_IMODE(names_path.stat().st_mode) == 0o600
    names = {json.loads(line)["key"]: json.loads(line) for line in names_path.read_text().splitlines()}
    manifest = json.loads((d.export / "manifest.json").read_text())
    truncated = {b for s in manifest["series"] if "truncated" in s["flags"] for b in s["bad_files"]}
    found = {names[k]["path"] for r in bad for k in names if k in r["reason"] and "path" in names[k]}
    assert truncated <= found
    # Withheld series say why by rule name.
    assert any(r["reason"].startswith("withheld by rule secondary-capture") for r in rows)
    # A re-run logs nothing identifying either.
    with caplog.at_level(logging.DEBUG):
        ingest(d.export, d.dataset, Pseudonymizer.from_config(demo_key=True), private_dir=d.private,
               workers=1, progress=False)
    assert not list(needles.find(caplog.text)), [m for _r, m in needles.find(caplog.text)][:5]
    assert scan_paths([d.dataset], needles) == []


def test_deid_outputs_and_logs_audit_clean(synth_export: Path, deid_out: tuple[Path, Path, str]) -> None:
    out, links, log_text = deid_out
    needles = _needles(synth_export, links)
    hits = scan_paths([out], needles)
    assert hits == [], hits[:20]
    assert not list(needles.find(log_text))
    written = list(out.rglob("*.dcm"))
    assert written
    for path in written[:50]:
        with open(path, "rb") as fh:
            head = fh.read(132)
        assert head[:128] == bytes(128) and head[128:] == b"DICM"
    ds = pydicom.dcmread(written[0], stop_before_pixels=True)
    assert ds.PatientIdentityRemoved == "YES"
