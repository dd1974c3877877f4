"""Each option, the de-identification markers, withheld classes and the value helpers."""

from __future__ import annotations

from datetime import date

import pytest
from pydicom.dataset import Dataset

from imaging.deid.apply import (
    DeidOptions,
    DeidStats,
    SafePrivate,
    clean_text,
    deidentify_dataset,
    shift_da,
    shift_dt,
    truncate_tm,
    withhold_reason,
)
from imaging.keys import Pseudonymizer
from tests.unit.deid_factory import CANARY, SECRET, ct_dataset

PSEUDO = Pseudonymizer(SECRET)


def _codes(ds: Dataset) -> set[str]:
    return {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}


def test_markers_follow_the_standard() -> None:
    out = deidentify_dataset(ct_dataset(), PSEUDO, DeidOptions())
    assert out is not None
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert _codes(out) == {"113100", "113105", "113107", "113108"}
    assert all(
        item.CodingSchemeDesignator == "DCM" for item in out.DeidentificationMethodCodeSequence
    )
    assert "Basic Profile" in out.DeidentificationMethod[0]
    basic = DeidOptions(
        retain_longitudinal_modified_dates=False,
        retain_patient_characteristics=False,
        clean_descriptors=False,
    )
    out = deidentify_dataset(ct_dataset(), PSEUDO, basic)
    assert out is not None and _codes(out) == {"113100"}
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert out.StudyDate in (None, "") and "SeriesDate" in out and out.SeriesDate == "19000101"


def test_pseudonyms_are_keyed_and_consistent() -> None:
    a = deidentify_dataset(ct_dataset(patient_id="P1"), PSEUDO, DeidOptions())
    b = deidentify_dataset(ct_dataset(patient_id="P1"), PSEUDO, DeidOptions())
    other = deidentify_dataset(
        ct_dataset(patient_id="P1"), Pseudonymizer(b"another-secret-of-32-bytes......")
    )
    assert a is not None and b is not None and other is not None
    assert a.PatientID == b.PatientID == a.PatientName == PSEUDO.pseudo_id("P1", "subject", "SUBJ")
    assert other.PatientID != a.PatientID
    assert a.AccessionNumber == PSEUDO.key(f"{CANARY}ACC01", "accession") != other.AccessionNumber
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID


def test_well_known_uids_are_never_remapped() -> None:
    ds = ct_dataset()
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2"  # a SOP class value in a U attribute
    ds.ReferencedImageSequence = [ref]
    out = deidentify_dataset(ds, PSEUDO)
    assert out is not None
    assert out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.840.10008.5.1.4.1.1.2"


def test_date_shift_keeps_intervals_per_subject() -> None:
    first = deidentify_dataset(ct_dataset(patient_id="P7", study_date="20190101"), PSEUDO)
    second = deidentify_dataset(ct_dataset(patient_id="P7", study_date="20190415"), PSEUDO)
    assert first is not None and second is not None
    d1, d2 = (
        date.fromisoformat(f"{v[:4]}-{v[4:6]}-{v[6:]}") for v in (first.StudyDate, second.StudyDate)
    )
    assert (d2 - d1).days == 104
    assert first.StudyDate != "20190101"
    shift = PSEUDO.date_shift_days("P7")
    assert first.StudyDate == shift_da("20190101", shift)
    assert first.StudyTime == "0813" and first.PatientBirthDate in (None, "")


def test_full_dates_option_keeps_dates() -> None:
    out = deidentify_dataset(
        ct_dataset(),
        PSEUDO,
        DeidOptions(retain_longitudinal_full_dates=True, retain_longitudinal_modified_dates=False),
    )
    assert out is not None and out.StudyDate == "20190315"
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    with pytest.raises(ValueError, match="exclude each other"):
        DeidOptions(retain_longitudinal_full_dates=True, retain_longitudinal_modified_dates=True)


def test_patient_characteristics_option() -> None:
    kept = deidentify_dataset(
        ct_dataset(), PSEUDO, DeidOptions(retain_patient_characteristics=True)
    )
    gone = deidentify_dataset(
        ct_dataset(), PSEUDO, DeidOptions(retain_patient_characteristics=False)
    )
    assert kept is not None and gone is not None
    assert (kept.PatientAge, kept.PatientSex, kept.PatientWeight, kept.PatientSize) == (
        "058Y",
        "F",
        61.5,
        1.68,
    )
    assert (
        "PatientAge" not in gone and gone.PatientSex in (None, "") and "PatientWeight" not in gone
    )


def test_clean_descriptors_whitelist() -> None:
    out = deidentify_dataset(ct_dataset(), PSEUDO, DeidOptions(clean_descriptors=True))
    assert out is not None
    assert out.SeriesDescription == "PV 5mm"
    assert out.StudyDescription == "CT ABDOMEN STUDY"  # the harmless word of "ZZPHI^STUDY" stays
    assert out.RequestAttributesSequence[0].RequestedProcedureDescription in (None, "")
    assert "RequestedProcedureID" not in out.RequestAttributesSequence[0]
    off = deidentify_dataset(ct_dataset(), PSEUDO, DeidOptions(clean_descriptors=False))
    assert (
        off is not None
        and "SeriesDescription" not in off
        and "RequestAttributesSequence" not in off
    )
    extra = DeidOptions.from_mapping({"extra_safe_words": ["Anna"]})
    assert clean_text("Anna Maria CT", extra.safe_words) == "Anna CT"
    assert clean_text("T1 SAG 3.0 1234567 19610203 Smith^John", extra.safe_words) == "T1 SAG 3.0"


def test_private_scheme_codes_are_removed() -> None:
    out = deidentify_dataset(ct_dataset(), PSEUDO)
    # Every item was private: the sequence goes (an empty one is invalid, 1-n items).
    assert out is not None and "ProcedureCodeSequence" not in out


def test_retain_safe_private() -> None:
    ds = ct_dataset()
    block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    block.add_new(0x27, "SH", "1.5 mm")
    block.add_new(0x28, "LO", CANARY)
    safe = SafePrivate.parse({"group": "0043", "creator": "GEMS_PARM_01", "element": "27"})
    stats = DeidStats()
    out = deidentify_dataset(ds, PSEUDO, DeidOptions(safe_private=(safe,)), stats)
    assert out is not None
    privates = {int(e.tag): e.value for e in out if e.tag.is_private}
    assert privates == {0x00430010: "GEMS_PARM_01", 0x00431027: "1.5 mm"}
    assert "113111" in _codes(out)
    assert (
        stats.actions["PrivateAttributes"]["kept"] == 1
        and stats.actions["PrivateAttributes"]["removed"] >= 2
    )
    with pytest.raises(ValueError, match="group must be odd"):
        SafePrivate.parse({"group": "0044", "creator": "X", "element": "10"})


def test_retain_uids_option() -> None:
    ds = ct_dataset()
    uid = ds.SeriesInstanceUID
    out = deidentify_dataset(ds, PSEUDO, DeidOptions(retain_uids=True))
    assert out is not None and out.SeriesInstanceUID == uid and "113110" in _codes(out)


def test_device_and_institution_identity_options() -> None:
    ds = ct_dataset()
    ds.StationName = "CT01"
    out = deidentify_dataset(
        ds, PSEUDO, DeidOptions(retain_device_identity=True, retain_institution_identity=True)
    )
    assert (
        out is not None
        and out.StationName == "CT01"
        and out.InstitutionName == f"{CANARY} Hospital"
    )
    out = deidentify_dataset(ct_dataset(), PSEUDO, DeidOptions())
    assert out is not None and out.InstitutionName == "ANONYMIZED"


def test_overrides_are_stricter() -> None:
    options = DeidOptions.from_mapping({"overrides": {"Manufacturer": "X"}})
    out = deidentify_dataset(ct_dataset(), PSEUDO, options)
    assert out is not None and "Manufacturer" not in out
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        deidentify_dataset(
            ct_dataset(), PSEUDO, DeidOptions.from_mapping({"overrides": {"NoSuchThing": "X"}})
        )
    with pytest.raises(ValueError, match="unknown key"):
        DeidOptions.from_mapping({"retain_everything": True})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"BurnedInAnnotation": "YES"}, "rule burned-in-annotation"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "rule secondary-capture"),
        ({"Modality": "US"}, "rule risky-modality"),
        ({"RecognizableVisualFeatures": "YES"}, "rule recognizable-features"),
    ],
)
def test_withheld_classes(change: dict[str, str], reason: str) -> None:
    ds = ct_dataset()
    for key, value in change.items():
        setattr(ds, key, value)
    stats = DeidStats()
    assert deidentify_dataset(ds, PSEUDO, DeidOptions(), stats) is None
    assert stats.last_reason is not None and reason in stats.last_reason
    assert sum(stats.withheld.values()) == 1


def test_ultrasound_released_when_allowed() -> None:
    ds = ct_dataset(modality="US")
    assert withhold_reason(ds, DeidOptions(allow_ultrasound=True)) is None
    assert deidentify_dataset(ds, PSEUDO, DeidOptions(allow_ultrasound=True)) is not None


def test_value_helpers() -> None:
    assert shift_da("20190301", -1) == "20190228"
    assert shift_da("2019.03.01", -1) == "20190228"
    assert shift_da("garbage", -1) == ""
    assert shift_dt("20190301101112.5+0100", -1) == "201902281011+0100"
    assert shift_dt("2019", -1) == ""
    assert truncate_tm("101112.123") == "1011" and truncate_tm("10:11:12") == "1011"


def test_stats_never_hold_values() -> None:
    stats = DeidStats()
    deidentify_dataset(ct_dataset(), PSEUDO, DeidOptions(), stats)
    text = repr(stats.to_dict())
    assert CANARY not in text and "20190315" not in text
    assert stats.actions["PatientName"]["replaced"] == 1
    assert stats.actions["StudyDate"]["shifted"] == 1
    assert stats.actions["PrivateAttributes"]["removed"] == 2


def test_structured_report_text_is_replaced() -> None:
    ds = ct_dataset()
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = (
        "121071",
        "DCM",
        "Finding",
    )
    item = Dataset()
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = [concept]
    item.TextValue = f"Findings for {CANARY}^REPORT: liver unremarkable"
    item.PersonName = f"{CANARY}^Observer"
    ds.ContentSequence = [item]
    out = deidentify_dataset(ds, PSEUDO)
    assert out is not None
    leaf = out.ContentSequence[0]
    assert leaf.TextValue == "ANONYMIZED" and leaf.PersonName == "ANONYMIZED"
    assert leaf.ConceptNameCodeSequence[0].CodeMeaning == "Finding"  # structure kept
    out_text = deidentify_dataset(ct_dataset(), PSEUDO)
    assert out_text is not None and "TextValue" not in out_text
