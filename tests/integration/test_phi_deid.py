"""The synthetic canary export, de-identified, audits to zero hits; withheld series are the risky ones."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from imaging.apps.audit import main as audit_main
from imaging.audit import build_needles, scan_paths
from imaging.deid.apply import SECONDARY_CAPTURE_CLASSES, DeidOptions
from imaging.deid.export import deidentify_export
from imaging.keys import Pseudonymizer

pytestmark = pytest.mark.integration
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


OPTION_SETS = {
    "default": DeidOptions(),
    "basic-only": DeidOptions(
        retain_longitudinal_modified_dates=False,
        retain_patient_characteristics=False,
        clean_descriptors=False,
    ),
}


@pytest.fixture(scope="module", params=sorted(OPTION_SETS))
def deidentified(
    request: pytest.FixtureRequest, synth_export: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("deid")
    links = root / "private" / "links.csv"
    summary = deidentify_export(
        synth_export, root / "out", Pseudonymizer.from_config(demo_key=True), OPTION_SETS[request.param],
        link_table=links, progress=False,
    )  # fmt: skip
    return root / "out", links, summary


def test_deidentified_export_audits_clean(
    synth_export: Path, deidentified: tuple[Path, Path, object]
) -> None:
    from imaging.synth.canaries import CANARY_TOKEN

    out, links, summary = deidentified
    manifest = synth_export / "manifest.json"
    assert summary.written > 0  # type: ignore[attr-defined]
    needles = build_needles([CANARY_TOKEN], [links], [manifest])
    assert len(needles) > 50
    # The needles are live: the raw export is full of hits ...
    assert scan_paths([synth_export / "DICOMDIR"], needles)
    # ... and the de-identified copy has none (canaries, originals, names, dates).
    hits = scan_paths([out], needles)
    assert hits == [], hits[:20]
    assert audit_main([str(out), "--link-table", str(links), "--manifest", str(manifest)]) == 0


def test_every_file_accounted_for_and_risky_series_withheld(
    synth_export: Path, deidentified: tuple[Path, Path, object]
) -> None:
    out, _links, summary = deidentified
    s = summary  # type: ignore[assignment]
    assert s.written + s.withheld + s.skipped_non_dicom + s.skipped_dicomdir == s.files_seen  # type: ignore[attr-defined]
    manifest = json.loads((synth_export / "manifest.json").read_text())
    risky = [
        e
        for e in manifest["series"]
        if e["sop_class_uid"] in SECONDARY_CAPTURE_CLASSES or e["modality"] == "US"
    ]
    audit = json.loads((out / "deid_audit.json").read_text())
    reasons = " ".join(audit["withheld_reasons"])
    if any(e["sop_class_uid"] in SECONDARY_CAPTURE_CLASSES for e in risky):
        assert "Secondary Capture" in reasons
    if any("truncated" in e["flags"] for e in manifest["series"]):
        assert "truncated" in reasons
    written = [pydicom.dcmread(p, stop_before_pixels=True) for p in out.rglob("*.dcm")]
    assert not any(
        ds.SOPClassUID in SECONDARY_CAPTURE_CLASSES or ds.Modality == "US" for ds in written
    )
    assert all(ds.PatientIdentityRemoved == "YES" for ds in written)
    # SEGs in the export still reference series present in the de-identified copy.
    series = {ds.SeriesInstanceUID for ds in written}
    for seg in (ds for ds in written if ds.SOPClassUID == SEG_CLASS):
        assert {ref.SeriesInstanceUID for ref in seg.ReferencedSeriesSequence} <= series
