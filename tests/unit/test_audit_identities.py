"""`imaging audit OUT --export EXPORT`: identities read from the export's headers, found in
every decoded form of an output, and a real clean pipeline output that stays clean.

The export is pydicom's real CT (CT_small.dcm) made into two patients' series with
planted identities; the leaking output has exactly one leak per file, written the
way tools really write it. The expected hits are the planted files, listed here by
hand, not derived from the audit.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image, PngImagePlugin
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from imaging.apps.audit import main as audit_main
from imaging.audit import build_needles, scan_paths
from imaging.audit.identities import _read_pydicom, _walk_identity, export_identities, read_identity
from imaging.deid.apply import deidentify_dataset
from imaging.deid.export import deidentify_export
from imaging.keys import Pseudonymizer
from imaging.pipelines.ingest import ingest

PS = Pseudonymizer(b"audit-identities-test-secret-0001")
CT = str(get_testdata_file("CT_small.dcm"))  # a real CT shipped in the pydicom wheel
PATIENTS = [
    {  # folder names as real exports write them: apostrophes, commas, parentheses
        "folder": "O'BRIEN^SEAMUS_19570312",
        "PatientName": "O'Brien^Seamus",
        "PatientID": "MRN7781234",
        "OtherPatientIDs": "OPID-55821",
        "IssuerOfPatientID": "GALWAY-UH",
        "PatientBirthDate": "19570312",
        "AccessionNumber": "ACX20240117",
        "ReferringPhysicianName": "Lindqvist^Karin",
        "OperatorsName": "Nakamura^Hideo",
        "InstitutionName": "St Brigid Infirmary",
        "InstitutionAddress": "12 Harbour Road, Galway",
    },
    {
        "folder": "Müller, Jürgen (12.03.1957)",
        "PatientName": "Müller^Jürgen",
        "PatientID": "MRN9904417",
        "PatientBirthDate": "19480705",
        "AccessionNumber": "ACX20240999",
        "PerformingPhysicianName": "Okonkwo^Adaeze",
        "SpecificCharacterSet": "ISO_IR 192",
    },
]


def _export(root: Path) -> Path:
    """Two patients, four CT slices each, under patient-named folders."""
    for p, patient in enumerate(PATIENTS):
        study, series = generate_uid(), generate_uid()
        folder = root / patient["folder"] / "CT"
        folder.mkdir(parents=True)
        for i in range(4):
            ds = pydicom.dcmread(CT)
            for key, value in patient.items():
                if key != "folder":
                    setattr(ds, key, value)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.ImagePositionPatient = [-158.0, -179.0, -75.0 + 5.0 * i]
            ds.InstanceNumber = i + 1
            ds.save_as(folder / f"IM{p}{i:03d}", enforce_file_format=True)
    return root


def _nifti(path: Path, nifti2: bool = False, **fields: str) -> Path:
    klass = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = klass(np.zeros((2, 2, 2), dtype=np.int16), np.eye(4))
    img.header["descrip"] = "imaging volume"
    for key, value in fields.items():
        if key == "intent_name":
            img.header.set_intent("none", name=value)
        elif key == "extension":
            img.header.extensions.append(nib.nifti1.Nifti1Extension(6, value.encode()))
        else:
            img.header[key] = value
    nib.save(img, str(path))
    return path


def _png(path: Path, chunk: str, text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "imaging")
    if chunk == "zTXt":
        info.add_text("Comment", text, zip=True)
    elif chunk == "iTXt":
        info.add_itxt("Description", text, lang="en", tkey="Description", zip=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path, pnginfo=info)
    return path


def _nested_dicom(path: Path, text: str) -> Path:
    """A de-identified CT whose only leak sits two sequences deep."""
    ds = deidentify_dataset(pydicom.dcmread(CT), PS)
    assert ds is not None
    inner = Dataset()
    inner.CodeMeaning = text
    outer = Dataset()
    outer.ConceptNameCodeSequence = Sequence([inner])
    ds.ContentSequence = Sequence([outer])
    ds.save_as(path, enforce_file_format=True)
    return path


def _leaking_output(out: Path) -> set[str]:
    """One leak per file, each in another form; returns the leaking paths (relative)."""
    out.mkdir()
    (out / "review.json.gz").write_bytes(  # name with \u escapes, inside gzip
        gzip.compress(json.dumps({"reviewer_note": "seen: Jürgen Müller"}, ensure_ascii=True).encode())
    )
    assert b"\\u00fc" in gzip.decompress((out / "review.json.gz").read_bytes())
    with open(out / "report.csv", "w", newline="") as fh:  # birth date, German layout
        csv.writer(fh).writerows([["series_key", "note"], ["1a2b3c4d5e6f7a8b", "born 12.03.1957"]])
    (out / "us.csv").write_text("series_key,dob\n9f8e7d6c5b4a3f2e,03/12/1957\n")  # US layout
    _nifti(out / "0f1e2d3c4b5a6978.nii.gz", descrip="acc ACX20240117")  # accession in descrip
    _nifti(out / "1e2d3c4b5a697887.nii.gz", aux_file="1957-03-12")  # ISO birth date in aux_file
    _nifti(out / "2d3c4b5a69788796.nii", extension='{"site": "12 Harbour Road"}')  # address part
    _nifti(out / "3c4b5a6978879605.nii.gz", nifti2=True, intent_name="dob 05/07/1948")  # NIfTI-2
    _png(out / "overlay_a.png", "zTXt", "SEAMUS O'BRIEN")  # compressed zTXt, reversed, upper case
    _png(out / "overlay_b.png", "iTXt", "st brigid infirmary")  # compressed iTXt, institution
    _nested_dicom(out / "seg.dcm", "Lindqvist")  # referring physician's family name, nested
    _nifti(out / "OBRIEN_SEAMUS.nii.gz")  # the name in a file name only (apostrophe dropped)
    (out / "notes.txt").write_text("checked by karin lindqvist\n")  # given family, lower case
    (out / "run.log").write_text("epoch 1 dice 0.81\nsubject mrn7781234 done\n")  # PatientID
    (out / "studies.jsonl").write_text(
        json.dumps({"k": "ab12"}) + "\n" + json.dumps({"operator": "Hideo Nakamura"}) + "\n"
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("review/meta.json", json.dumps({"other": "OPID-55821"}))  # OtherPatientIDs
    (out / "bundle.zip").write_bytes(buf.getvalue())
    (out / "by-name" / "Okonkwo, Adaeze").mkdir(parents=True)  # an empty folder named after staff
    (out / "issuer.md").write_text("issuer galway-uh\n")  # IssuerOfPatientID
    (out / "second.csv").write_text("k,v\nx,ACX20240999\n")  # second patient's accession
    return {
        "review.json.gz", "report.csv", "us.csv", "0f1e2d3c4b5a6978.nii.gz",
        "1e2d3c4b5a697887.nii.gz", "2d3c4b5a69788796.nii", "3c4b5a6978879605.nii.gz", "overlay_a.png", "overlay_b.png",
        "seg.dcm", "OBRIEN_SEAMUS.nii.gz", "notes.txt", "run.log", "studies.jsonl", "bundle.zip",
        "by-name/Okonkwo, Adaeze", "issuer.md", "second.csv",
    }


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("export") / "export")


def test_identities_read_from_headers(export: Path) -> None:
    found = export_identities(export)
    for patient in PATIENTS:
        for key, value in patient.items():
            if key not in ("folder", "SpecificCharacterSet"):
                assert value in found[key], key


def test_fast_identity_read_matches_pydicom(export: Path) -> None:
    """The fast walk and pydicom agree on every file where the fast walk applies."""
    files = sorted(export.rglob("IM*"))
    files += sorted(Path(CT).parent.glob("*.dcm"))  # pydicom's test files: many encodings
    fast_read = 0
    for path in files:
        try:
            fast = _walk_identity(path.read_bytes()[: 16 << 10])
        except Exception:
            continue  # pydicom's case: read_identity falls back
        fast_read += 1
        assert fast == _read_pydicom(path), path.name
        assert read_identity(path) == fast
    assert fast_read >= len(files) // 2


# Both matchers: the one trie regex (few word needles) and the word index (many, as from a
# large export), forced here by lowering the threshold.
MATCHERS = pytest.mark.parametrize("index_from", [300, 0], ids=["regex", "word-index"])


@MATCHERS
def test_every_leaking_file_is_named_and_the_value_never(
    export: Path, tmp_path: Path, index_from: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("imaging.audit.needles.WORD_INDEX_FROM", index_from)
    expected = _leaking_output(tmp_path / "out")
    needles = build_needles([], exports=[export])
    hits = scan_paths([tmp_path / "out"], needles)
    assert bool(needles._index) == (index_from == 0)  # the matcher this case means to test
    named = {Path(h.where).relative_to(tmp_path / "out").as_posix() for h in hits}
    assert named == expected
    secrets = ("brien", "seamus", "müller", "jürgen", "1957", "lindqvist", "mrn", "acx", "harbour")
    for hit in hits:
        assert not any(s in (hit.masked + hit.field).lower() for s in secrets), hit
    by_file = {Path(h.where).name: h for h in hits}
    assert by_file["0f1e2d3c4b5a6978.nii.gz"].field == "header descrip"
    assert by_file["0f1e2d3c4b5a6978.nii.gz"].rule == "export AccessionNumber"
    assert by_file["overlay_a.png"].field == "PNG zTXt chunk"
    assert by_file["overlay_b.png"].field == "PNG iTXt chunk"
    assert by_file["seg.dcm"].field.startswith("(0040,A730) ContentSequence[0]>")
    assert by_file["OBRIEN_SEAMUS.nii.gz"].field == "file path"
    assert by_file["review.json.gz"].field == "$.reviewer_note"
    assert by_file["report.csv"].rule == "export PatientBirthDate"
    assert audit_main([str(tmp_path / "out"), "--export", str(export)]) == 1


@MATCHERS
def test_clean_pipeline_output_stays_clean(
    export: Path, tmp_path: Path, index_from: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real ingest and deid outputs of the same export: hex keys, numbers, no alarms."""
    monkeypatch.setattr("imaging.audit.needles.WORD_INDEX_FROM", index_from)
    ingest(export, tmp_path / "ds", PS, private_dir=tmp_path / "private", workers=1, progress=False)
    deidentify_export(export, tmp_path / "deid", PS, progress=False)
    assert list((tmp_path / "ds").rglob("*.nii.gz")) and list((tmp_path / "deid").rglob("*.dcm"))
    needles = build_needles([], exports=[export])
    assert len(needles) > 40
    assert scan_paths([tmp_path / "ds", tmp_path / "deid"], needles) == []
    assert audit_main([str(tmp_path / "ds"), str(tmp_path / "deid"), "--export", str(export)]) == 0
    # ... and the audit does look at them: one planted leak there is found.
    (tmp_path / "ds" / "catalog.csv").open("a").write("x,y,Seamus\n")
    assert audit_main([str(tmp_path / "ds"), "--export", str(export)]) == 1


def test_short_numbers_and_hex_keys_raise_no_alarm() -> None:
    """Numeric IDs under 6 digits and 3-letter names inside hex keys are not needles/hits;
    the same values standing alone as words are."""
    from imaging.audit.identities import identity_needles
    from imaging.audit.needles import Needles

    needles = Needles()
    ids = {"PatientID": ["4711", "20481632"], "PatientName": ["Ebba^Li"], "AccessionNumber": ["ACC-1"]}
    for value, rule, minimum in identity_needles(ids):
        needles.add([value], rule, min_len=minimum, word=True)
    clean = "series_key,n_instances,volume_ml\n1f2ebba9c0d3e4a5,4711,20481632.5\nx,ACC-12,1.20481632\n"
    assert list(needles.find(clean)) == []
    found = {rule for rule, _ in needles.find("id 20481632; reviewer EBBA; acc acc 1")}
    assert found == {"export PatientID", "export PatientName", "export AccessionNumber"}

