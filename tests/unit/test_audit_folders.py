"""`imaging audit`: the export's folder names are needles; preambles and file paths are scanned."""

from __future__ import annotations

import json
from pathlib import Path

from imaging.apps.audit import main as audit_main
from imaging.audit import build_needles, scan_paths
from imaging.audit.needles import folder_names
from tests.unit.deid_factory import ct_dataset

NAME = "DOE^JOHN_12345678"


def _export(root: Path) -> Path:
    for rel in (f"DICOM/{NAME}/S0000001/SE000001", "DICOM/1.2.840.99.5/20190315", "Ann-Sofie Berg/IMAGES"):
        (root / rel).mkdir(parents=True)
    return root


def test_folder_names_skip_numbers_uids_and_generic_names(tmp_path: Path) -> None:
    names = folder_names(_export(tmp_path / "export"))
    assert NAME in names and "JOHN" in names and "Ann-Sofie Berg" in names and "Berg" in names
    for generic in ("DICOM", "S0000001", "SE000001", "1.2.840.99.5", "20190315", "IMAGES", "12345678"):
        assert generic not in names


def test_folder_name_found_in_text_preamble_and_path_never_shown(tmp_path: Path) -> None:
    export = _export(tmp_path / "export")
    out = tmp_path / "out"
    out.mkdir()
    (out / "catalog.csv").write_text(f"series_key,reason\nabc,file '{NAME}/S1/IM1': truncated\n")
    (out / "report.json").write_text(json.dumps({"rows": [{"reason": "ok"}]}))
    ds = ct_dataset()
    ds.preamble = b"exported for " + b"Ann-Sofie Berg".ljust(115, b"\0")
    ds.save_as(out / "img.dcm", enforce_file_format=True)
    (out / f"x_{NAME}").mkdir()
    (out / f"x_{NAME}" / "notes.txt").write_text("nothing here\n")
    needles = build_needles([], exports=[export])
    hits = scan_paths([out], needles)
    where = {(Path(h.where).name, h.field.split(" @")[0], h.rule) for h in hits}
    assert ("catalog.csv", "line 2 reason", "folder-name") in where
    assert ("img.dcm", "preamble", "folder-name") in where
    assert ("notes.txt", "file path", "folder-name") in where
    preamble = next(h for h in hits if h.field.startswith("preamble"))
    assert preamble.field == "preamble @13"  # the offset in the 128 bytes
    assert not any("JOHN" in h.masked or "Berg" in h.masked for h in hits)  # never the value
    assert not any(h.where.endswith("report.json") for h in hits)
    assert audit_main([str(out), "--export", str(export), "--canary", "ZZPHI"]) == 1
    (out / "catalog.csv").unlink()
    (out / "img.dcm").unlink()
    (out / f"x_{NAME}" / "notes.txt").unlink()
    # An empty folder's name is output too.
    assert [(h.field, h.rule) for h in scan_paths([out], needles)] == [("folder path", "folder-name")]
    (out / f"x_{NAME}").rmdir()
    assert audit_main([str(out), "--export", str(export), "--canary", "ZZPHI"]) == 0
