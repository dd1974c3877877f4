"""`imaging audit` over files: canaries planted in every kind of file are found; clean ones are not."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imaging.apps.audit import main as audit_main
from imaging.audit import Hit, build_needles, mask, scan_paths
from imaging.audit.needles import Needles, load_link_table, load_manifest
from imaging.deid.apply import deidentify_dataset
from imaging.keys import Pseudonymizer
from tests.unit.deid_factory import CANARY, SECRET, ct_dataset

NEEDLES = build_needles([CANARY])
TOKEN = f"{CANARY}^Secret^Value"


def _clean_dicom() -> Dataset:
    ds = deidentify_dataset(ct_dataset(), Pseudonymizer(SECRET))
    assert ds is not None
    return ds


def _nifti(path: Path, **fields: str) -> Path:
    img = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.uint8), np.eye(4))
    for key, value in fields.items():
        if key == "extension":
            img.header.extensions.append(nib.nifti1.Nifti1Extension(6, value.encode()))
        elif key == "intent_name":
            img.header.set_intent("none", name=value)
        else:
            img.header[key] = value
    nib.save(img, str(path))
    return path


def _png(path: Path, kind: str | None) -> Path:
    info = PngImagePlugin.PngInfo()
    if kind == "tEXt":
        info.add_text("Comment", TOKEN)
    elif kind == "zTXt":
        info.add_text("Comment", TOKEN, zip=True)
    elif kind == "iTXt":
        info.add_itxt("Author", TOKEN, lang="en", tkey="Author", zip=True)
    else:
        info.add_text("Software", "imaging")
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path, pnginfo=info)
    return path


def _planted(tmp: Path) -> dict[str, Path]:
    """One file per channel, each with the canary only there."""
    files: dict[str, Path] = {}
    tmp.mkdir(parents=True, exist_ok=True)
    nested = _clean_dicom()
    item = Dataset()
    item.CodeMeaning = TOKEN
    nested.AnatomicRegionSequence = Sequence([item])
    files["dicom nested"] = tmp / "nested.dcm"
    nested.save_as(files["dicom nested"], enforce_file_format=True)
    private = _clean_dicom()
    private.private_block(0x0019, "ACME 1.0", create=True).add_new(0x10, "LO", TOKEN)
    files["dicom private"] = tmp / "private.dcm"
    private.save_as(files["dicom private"], enforce_file_format=True)
    blob = _clean_dicom()
    blob.private_block(0x0021, "ACME BLOB", create=True).add_new(
        0x01, "UN", b"\x00\x01" + TOKEN.encode()
    )
    files["dicom private UN"] = tmp / "blob.dcm"
    blob.save_as(files["dicom private UN"], enforce_file_format=True)
    for key in ("descrip", "aux_file", "intent_name", "extension"):
        files[f"nifti {key}"] = _nifti(tmp / f"{key}.nii.gz", **{key: TOKEN[:15]})
    files["json"] = tmp / "sidecar.json"
    files["json"].write_text(json.dumps({"a": {"b": [1, {"c": TOKEN}]}}))
    files["csv"] = tmp / "report.csv"
    files["csv"].write_text(f"series_key,reason\nabc,ok\ndef,{TOKEN}\n")
    files["log"] = tmp / "train.log"
    files["log"].write_text(f"epoch 1 loss 0.5\nloading {TOKEN}\n")
    for kind in ("tEXt", "zTXt", "iTXt"):
        files[f"png {kind}"] = _png(tmp / f"{kind}.png", kind)
    files["npz"] = tmp / "arrays.npz"
    np.savez(files["npz"], names=np.array([TOKEN]))
    files["gzip"] = tmp / "notes.txt.gz"
    files["gzip"].write_bytes(gzip.compress(TOKEN.encode()))
    files["binary"] = tmp / "weights.bin"
    files["binary"].write_bytes(b"\x00" * 5000 + TOKEN.encode("utf-8") + b"\x00" * 10)
    return files


def _clean_files(tmp: Path) -> list[Path]:
    _clean_dicom().save_as(tmp / "clean.dcm", enforce_file_format=True)
    paths = [tmp / "clean.dcm", _nifti(tmp / "clean.nii.gz", descrip="imaging volume")]
    (tmp / "clean.json").write_text(json.dumps({"series_key": "1a2b", "spacing": [1, 1, 2]}))
    (tmp / "clean.csv").write_text("series_key,status\n1a2b,ok\n")
    (tmp / "clean.log").write_text("epoch 1 dice 0.8\n")
    paths += [
        tmp / "clean.json",
        tmp / "clean.csv",
        tmp / "clean.log",
        _png(tmp / "clean.png", None),
    ]
    return paths


def test_canary_found_in_every_kind_of_file(tmp_path: Path) -> None:
    files = _planted(tmp_path)
    for channel, path in files.items():
        hits = scan_paths([path], NEEDLES)
        assert any(h.rule == "canary" for h in hits), channel
        assert all(TOKEN not in h.masked and CANARY not in h.masked for h in hits), channel
    nested = scan_paths([files["dicom nested"]], NEEDLES)
    assert any("AnatomicRegionSequence[0]>(0008,0104) CodeMeaning" in h.field for h in nested)
    private = scan_paths([files["dicom private"]], NEEDLES)
    assert any(h.field.startswith("(0019,1010)") for h in private)
    assert any(h.field == "$.a.b[1].c" for h in scan_paths([files["json"]], NEEDLES))
    assert any(h.field == "line 3 reason" for h in scan_paths([files["csv"]], NEEDLES))
    assert any(h.field == "line 2" for h in scan_paths([files["log"]], NEEDLES))


def test_clean_files_have_no_hits(tmp_path: Path) -> None:
    paths = _clean_files(tmp_path)
    assert scan_paths(paths, NEEDLES) == []
    assert scan_paths([tmp_path], NEEDLES) == []  # folders are walked


def test_link_table_and_manifest_values(tmp_path: Path) -> None:
    table = tmp_path / "links.csv"
    table.write_text(
        "kind,original,pseudonym\npatient_id,PID123456,SUBJ-1\nstudy,1.2.3.4.5,2.25.1\n"
    )
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {"canaries": ["19610203", "081317.000001"], "uids": ["1.2.3.9"], "canary_token": "XQ"}
        )
    )
    assert load_link_table(table) == ["PID123456", "1.2.3.4.5"]
    assert load_manifest(manifest) == (["19610203", "081317.000001", "XQ"], ["1.2.3.9"])
    needles = build_needles([CANARY], [table], [manifest])
    target = tmp_path / "notes.txt"
    target.write_text(
        "id PID123456 uid 1.2.3.4.5 and 1.2.3.4.56 born 19610203 at 081317.000001 2.25.1.2.3.9\n"
    )
    hits = scan_paths([target], needles)
    assert sorted(h.rule for h in hits) == ["link-table", "link-table", "manifest", "manifest"]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no column named 'original"):
        load_link_table(bad)


def test_dicom_pattern_rules(tmp_path: Path) -> None:
    raw = ct_dataset()
    raw.PatientName = "Smith^John"
    raw.PatientBirthDate = "19610203"
    path = tmp_path / "raw.dcm"
    raw.save_as(path, enforce_file_format=True)
    rules = {(h.rule, h.field.split(" ")[-1]) for h in scan_paths([path], Needles())}
    assert ("person-name", "PatientName") in rules and (
        "person-name",
        "ReferringPhysicianName",
    ) in rules
    assert ("date", "PatientBirthDate") in rules and ("date", "StudyDate") in rules
    clean = _clean_dicom()
    clean.save_as(path, enforce_file_format=True)
    assert scan_paths([path], Needles()) == []  # pseudonym names, shifted dates declared MODIFIED


def test_json_sidecar_keyword_rules(tmp_path: Path) -> None:
    path = tmp_path / "vol.json"
    path.write_text(
        json.dumps({"PatientName": "Doe^Jane", "StudyDate": "20190101", "Modality": "CT"})
    )
    assert {h.rule for h in scan_paths([path], Needles())} == {"person-name", "date"}


def test_mask() -> None:
    assert mask("ZZPHI^NAME") == "ZZ********(10)"
    assert mask("ab") == "ab(2)"
    assert Hit("f", "x", "canary", mask("secret-value")).masked.startswith("se")


def test_cli_exit_codes_and_masked_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _planted(tmp_path / "planted")
    clean = tmp_path / "clean"
    clean.mkdir()
    _clean_files(clean)
    assert audit_main([str(clean)]) == 0
    assert audit_main([str(files["json"]), "--canary", CANARY]) == 1
    out = capsys.readouterr().out
    assert "canary" in out and TOKEN not in out
    assert audit_main([str(tmp_path / "missing")]) == 2
    assert audit_main([]) == 2


def test_many_needles_compile_to_one_pattern(tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    uids = [generate_uid() for _ in range(5000)]
    needles = Needles().add(uids, "link-table")
    target = tmp_path / "big.log"
    with open(target, "w") as fh:
        for i in range(20000):
            fh.write(f"line {i} series 2.25.{i}{i} ok\n")
        fh.write(f"leak {uids[4321]}\n")
    hits = scan_paths([target], needles)
    assert [(h.field, h.rule) for h in hits] == [("line 20001", "link-table")]
