"""One withholding policy (deid and ingest), overlay bits, preamble, age, subject key, descriptors.

Every rule has an instance that it withholds and a neighbour it releases. Independent
checks: the preamble is read as raw bytes, pixel values through pydicom's own
decoder, and the written files are validated by dciodvfy (dicom3tools).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.sequence import Sequence

from imaging.deid.apply import DeidOptions, DeidStats, deidentify_dataset, withhold_reason
from imaging.deid.export import deidentify_export
from imaging.deid.options import SafePrivate
from imaging.deid.values import clean_text
from imaging.deid.withhold import POLICY_KEYWORDS, RULES, WithholdPolicy, check, read_policy_header
from imaging.keys import Pseudonymizer, subject_identity
from imaging.pipelines.ingest import ingest
from tests.fixtures.datasets import stack_positions, write_slices
from tests.unit.deid_factory import CANARY, SECRET, ct_dataset

PSEUDO = Pseudonymizer(SECRET)

# rule -> (attributes that trigger it, the nearest attributes that must not)
CASES: dict[str, tuple[dict[str, object], dict[str, object]]] = {
    "burned-in-annotation": ({"BurnedInAnnotation": "YES"}, {"BurnedInAnnotation": "NO"}),
    "recognizable-features": ({"RecognizableVisualFeatures": "YES"}, {"RecognizableVisualFeatures": "NO"}),
    "secondary-capture": ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}),
    "screen-save": ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]},
                    {"ImageType": ["DERIVED", "PRIMARY", "AXIAL"]}),
    "dose-report": ({"SeriesDescription": "Dose Report"}, {"SeriesDescription": "ABDOMEN PV"}),
    "risky-modality": ({"Modality": "XA"}, {"Modality": "MR"}),
}


def _ds(change: dict[str, object]):  # type: ignore[no-untyped-def]
    ds = ct_dataset()
    for key, value in change.items():
        setattr(ds, key, value)
    return ds


def test_every_rule_is_tested() -> None:
    assert set(CASES) == set(RULES)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_withholds_and_its_neighbour_is_released(rule: str) -> None:
    bad, good = CASES[rule]
    stats = DeidStats()
    assert deidentify_dataset(_ds(bad), PSEUDO, DeidOptions(), stats) is None
    assert stats.last_reason is not None and f"rule {rule}" in stats.last_reason
    assert deidentify_dataset(_ds(good), PSEUDO, DeidOptions()) is not None
    # Switching the rule off releases the instance (risky-modality: allow the modality).
    if rule == "risky-modality":
        policy = WithholdPolicy(allow_modalities=frozenset({"XA"}))
    else:
        policy = WithholdPolicy(allow_rules=frozenset({rule}))
    assert withhold_reason(_ds(bad), DeidOptions(withhold=policy)) is None


@pytest.mark.parametrize("modality", ["XA", "RF", "CR", "DX", "MG", "NM", "OT", "XC", "ES", "US"])
def test_risky_modalities(modality: str) -> None:
    found = check({"Modality": modality})
    assert found is not None and found.rule == "risky-modality"
    assert check({"Modality": modality}, WithholdPolicy(allow_modalities=frozenset({modality}))) is None


def test_ct_class_dose_screen_is_withheld() -> None:
    """A CT-class DERIVED\\SECONDARY\\SCREEN SAVE dose page was released before."""
    ds = _ds({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"], "SeriesDescription": "Patient Protocol"})
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert "rule screen-save" in (withhold_reason(ds) or "")


def test_config_mapping() -> None:
    opts = DeidOptions.from_mapping({"withhold": {"allow_rules": ["screen-save"], "allow_modalities": ["dx"]},
                                     "allow_ultrasound": True})
    assert opts.policy().allow_modalities == {"DX", "US"} and opts.policy().allow_rules == {"screen-save"}
    with pytest.raises(ValueError, match="unknown rule"):
        DeidOptions.from_mapping({"withhold": {"allow_rules": ["nope"]}})


def test_ingest_applies_the_same_policy(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_slices(src / "burned", stack_positions(4), extra={"BurnedInAnnotation": "YES"})
    write_slices(src / "ok", stack_positions(4), extra={"BurnedInAnnotation": "NO"})
    summary = ingest(src, tmp_path / "ds", PSEUDO, private_dir=tmp_path / "p", workers=1, progress=False)
    by_reason = {r.status + ":" + r.reason.split(":")[0] for r in summary.rows}
    assert by_reason == {"skipped:withheld by rule burned-in-annotation", "ok:"}
    assert not list((tmp_path / "ds" / "volumes").glob("*.nii.gz"))[1:]  # one volume only
    released = ingest(src, tmp_path / "ds2", PSEUDO, private_dir=tmp_path / "p2", workers=1, progress=False,
                      withhold=WithholdPolicy(allow_rules=frozenset({"burned-in-annotation"})))
    assert released.counts == {"ok": 2}


@pytest.mark.parametrize("position", [0, 3])
@pytest.mark.parametrize("flags", [{"BurnedInAnnotation": "YES"}, {"RecognizableVisualFeatures": "YES"},
                                   {"SeriesDescription": "Dose Report"}])
def test_one_flagged_instance_withholds_its_series_in_ingest_and_deid(tmp_path: Path, position: int,
                                                                       flags: dict[str, str]) -> None:
    """Every instance's own flags count, not only the first file's (first and last tried)."""
    src = tmp_path / "in"
    extra: list[dict[str, object]] = [{"BurnedInAnnotation": "NO"} for _ in range(5)]
    extra[position] = dict(flags)
    write_slices(src / "mixed", stack_positions(5), extra=extra)
    # the oracle: which files carry a flag, read back with pydicom
    flagged = [f for f in sorted((src / "mixed").iterdir())
               if any(str(pydicom.dcmread(f).get(k, "")) == v for k, v in flags.items())]
    assert len(flagged) == 1
    summary = ingest(src, tmp_path / "ds", PSEUDO, private_dir=tmp_path / "p", workers=1, progress=False)
    (row,) = summary.rows
    assert row.status == "skipped" and row.reason.startswith("withheld by rule "), row.reason
    assert "1 of 5 instance(s)" in row.reason
    assert not list((tmp_path / "ds" / "volumes").glob("*.nii.gz"))
    stats = deidentify_export(src, tmp_path / "deid", PSEUDO, progress=False)
    written = [f for f in (tmp_path / "deid").rglob("*") if f.is_file() and f.suffix in ("", ".dcm")]
    assert len(written) == 4, stats  # deid releases the other four and withholds the flagged one


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
def test_policy_header_fast_reader_matches_pydicom(tmp_path: Path, syntax: str) -> None:
    """The fast header reader (plain files) and pydicom give the policy the same attributes."""
    ds = ct_dataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.BurnedInAnnotation, ds.RecognizableVisualFeatures = "YES", "NO"
    ds.SeriesDescription, ds.IssuerOfPatientID = "Dose Report", "HOSP^A"
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    fast = read_policy_header(str(path))
    ref = pydicom.dcmread(path, stop_before_pixels=True)
    assert set(fast) == set(POLICY_KEYWORDS)
    for kw in POLICY_KEYWORDS:
        value = ref.get(kw)
        assert (list(fast[kw]) if isinstance(fast[kw], list) else fast[kw]) == \
            (list(value) if isinstance(value, pydicom.multival.MultiValue) else value), kw
    assert check(fast) == check(ref)


def test_overlay_bits_in_pixel_data_are_removed(tmp_path: Path) -> None:
    """12-bit data with an overlay plane in bit 15: the plane goes, the pixel values stay."""
    ds = ct_dataset()
    values = np.arange(64, dtype=np.uint16).reshape(8, 8) * 50
    stored = values.copy()
    stored[2:4, 2:6] |= 1 << 15  # the overlay's "text"
    ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 0, 16, 12, 11
    ds.PixelData = stored.tobytes()
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60000011, "US", 8)
    ds.add_new(0x60000100, "US", 16)  # OverlayBitsAllocated 16: the plane is in the pixel data
    ds.add_new(0x60000102, "US", 15)
    out = deidentify_dataset(ds, PSEUDO)
    assert out is not None
    raw = np.frombuffer(out.PixelData, dtype="<u2").reshape(8, 8)
    assert np.array_equal(raw, values) and not np.any(raw >> 12)
    assert 0x60000102 not in out
    # ingest: the NIfTI holds the stored values only
    src = tmp_path / "in"
    write_slices(src / "s", stack_positions(3), extra={"BitsStored": 12, "HighBit": 11})
    for path in sorted((src / "s").iterdir()):
        f = pydicom.dcmread(path)
        arr = f.pixel_array.astype(np.uint16) | (1 << 14)
        f.PixelRepresentation = 0
        f.PixelData = arr.tobytes()
        f.save_as(path)
    summary = ingest(src, tmp_path / "ds", PSEUDO, private_dir=tmp_path / "p", workers=1, progress=False)
    (row,) = summary.rows
    import nibabel as nib

    data = np.asarray(nib.load(tmp_path / "ds" / row.volume_path).dataobj)
    assert data.max() < 4096


def test_preamble_zeroed_and_dciodvfy_accepts(tmp_path: Path) -> None:
    src = tmp_path / "export" / f"DOE^{CANARY}_1234"
    src.mkdir(parents=True)
    ds = ct_dataset()
    ds.Rows = ds.Columns = 8
    ds.preamble = f"{CANARY} PREAMBLE Doe^John".encode().ljust(128, b"\0")
    ds.save_as(src / "IM1", enforce_file_format=True)
    assert CANARY.encode() in (src / "IM1").read_bytes()[:128]
    out = tmp_path / "out"
    summary = deidentify_export(tmp_path / "export", out, PSEUDO, progress=False)
    assert summary.written == 1
    (path,) = out.rglob("*.dcm")
    head = path.read_bytes()[:132]
    assert head[:128] == bytes(128) and head[128:] == b"DICM"
    assert pydicom.dcmread(path).preamble == bytes(128)
    dciodvfy = shutil.which("dciodvfy")
    assert dciodvfy, "dciodvfy (dicom3tools) must be installed: scripts/system-deps.sh"
    proc = subprocess.run([dciodvfy, "-new", str(path)], capture_output=True, text=True, timeout=60)
    report = proc.stdout + proc.stderr
    errors = [ln for ln in report.splitlines() if ln.startswith("Error")]
    # The factory's CT is minimal (missing Type 1/2 module attributes it never had);
    # nothing de-identification writes may be wrong.
    ours = ("Deidentification", "PatientIdentityRemoved", "LongitudinalTemporal", "PatientAge", "PatientID",
            "PatientName", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Preamble",
            "ProcedureCodeSequence", "number of Items = <0>")
    assert not [e for e in errors if any(k in e for k in ours)], report
    assert "CTImage" in report  # dciodvfy recognised and checked the IOD


def test_age_90_and_over_becomes_090y() -> None:
    for age, want in (("089Y", "089Y"), ("090Y", "090Y"), ("094Y", "090Y"), ("104Y", "090Y"), ("011M", "011M")):
        ds = ct_dataset()
        ds.PatientAge = age
        out = deidentify_dataset(ds, PSEUDO)
        assert out is not None and out.PatientAge == want, age
    ds = ct_dataset()
    ds.PatientAge = "097Y"
    out = deidentify_dataset(ds, PSEUDO, DeidOptions(keep_age_90_plus=True))
    assert out is not None and out.PatientAge == "097Y"


def test_subject_is_issuer_and_patient_id() -> None:
    a, b = ct_dataset(patient_id="12345"), ct_dataset(patient_id="12345")
    a.IssuerOfPatientID, b.IssuerOfPatientID = "HOSP-A", "HOSP-B"
    out_a, out_b = deidentify_dataset(a, PSEUDO), deidentify_dataset(b, PSEUDO)
    assert out_a is not None and out_b is not None and out_a.PatientID != out_b.PatientID
    # Without an issuer the key is PatientID alone (keys of earlier releases stay valid).
    plain = deidentify_dataset(ct_dataset(patient_id="12345"), PSEUDO)
    assert plain is not None and plain.PatientID == PSEUDO.pseudo_id("12345", "subject", "SUBJ")


def test_empty_patient_id_is_a_subject_per_study(caplog: pytest.LogCaptureFixture) -> None:
    one, two, same = ct_dataset(patient_id=""), ct_dataset(patient_id=""), ct_dataset(patient_id="")
    same.StudyInstanceUID = one.StudyInstanceUID
    ids = [deidentify_dataset(d, PSEUDO) for d in (one, two, same)]
    assert all(d is not None for d in ids)
    assert ids[0].PatientID != ids[1].PatientID and ids[0].PatientID == ids[2].PatientID  # type: ignore[union-attr]
    assert "empty PatientID" in caplog.text
    assert subject_identity("", "", "1.2.3")[1] and not subject_identity("7", "", "1.2.3")[1]


def test_kept_safe_private_sequence_is_cleaned_inside() -> None:
    ds = ct_dataset()
    block = ds.private_block(0x0009, f"{CANARY} PRIVATE")
    item = pydicom.Dataset()
    item.PatientName = f"{CANARY}^Inner"
    item.ContentDate = "20190315"
    item.private_block(0x0011, "OTHER", create=True).add_new(0x01, "LO", f"{CANARY}^NESTED")
    block.add_new(0x03, "SQ", Sequence([item]))
    opts = DeidOptions(safe_private=(SafePrivate(0x0009, f"{CANARY} PRIVATE", 0x03),))
    out = deidentify_dataset(ds, PSEUDO, opts)
    assert out is not None
    kept = out.private_block(0x0009, f"{CANARY} PRIVATE")[0x03].value[0]
    assert CANARY not in str(kept.get("PatientName", "")) and kept.ContentDate != "20190315"
    assert (0x0011, 0x1001) not in kept and (0x0011, 0x0010) not in kept


def test_clean_descriptors_drop_bare_digit_tokens() -> None:
    assert clean_text("CT ABDOMEN 12 05 23") == "CT ABDOMEN"
    assert clean_text("T1 SAG 3.0 5mm 512x512 b800") == "T1 SAG 3.0 5mm 512x512 b800"
    assert clean_text("CHEST 12.05.23 4711") == "CHEST"


def test_transfer_syntax_names_without_pydicom_are_pydicoms() -> None:
    from pydicom.uid import UID

    from imaging.dicom.syntax import _TS_NAMES, ts_name

    assert all(ts_name(uid) == UID(uid).name for uid in _TS_NAMES)
    assert ts_name("1.2.840.10008.1.2.4.80") == UID("1.2.840.10008.1.2.4.80").name and ts_name(None) == "missing"
