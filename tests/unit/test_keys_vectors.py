"""Known-answer vectors for keyed pseudonyms (docs/pseudonyms.md).

A hospital keeps links from its patients to our keys, and a re-ingest must
find the same subject/study/series keys and ``2.25.`` UIDs. These values were
computed once (release 3, derivation v1) and are hard-coded: if one of them
changes, the derivation changed, and that is a versioned migration (see the
doc), never a test to update in passing.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from imaging.deid.apply import deidentify_dataset
from imaging.deid.elements import map_uid
from imaging.deid.options import DeidOptions
from imaging.deid.values import shift_da
from imaging.keys import Pseudonymizer, subject_identity
from tests.unit.deid_factory import ct_dataset

SECRET = b"imaging-known-answer-vector-secret-v1"
PATIENT_ID, ISSUER = "PAT-000123", "HOSP-A"
STUDY = "1.2.826.0.1.3680043.8.498.10001"
SERIES = "1.2.826.0.1.3680043.8.498.10002"
SOP = "1.2.826.0.1.3680043.8.498.10003"
ACCESSION = "ACC-778899"
FILE = "PATIENT_A/IM0001.dcm"

# identity -> (subject key, pseudo PatientID, date shift in days, StudyDate 20190315 shifted)
SUBJECTS = {
    (PATIENT_ID, ISSUER, STUDY): ("dbed2e8193092eb4", "SUBJ-dbed2e8193", -51, "20190123"),
    (PATIENT_ID, "", STUDY): ("1e20cc67b56dffcd", "SUBJ-1e20cc67b5", -143, "20181023"),
    ("", "", STUDY): ("212c834a360be1bf", "SUBJ-212c834a36", -133, "20181102"),  # per-study subject
}
KEYS = {
    (STUDY, "study"): "8a9c8eb929f2c549",
    (SERIES, "series"): "f101d153c3e458fa",
    (SOP, "sop"): "4da9380fd1c287af",
    (ACCESSION, "accession"): "88af3e0bba27029f",
    (FILE, "file"): "b655ff19c1b13146",
}
UIDS = {
    STUDY: "2.25.141282222459728536137828973917924319289",
    SERIES: "2.25.855597761591768957740007191550339986",
    SOP: "2.25.274450478117014657365405096194530709928",
}
PS = Pseudonymizer(SECRET)


@pytest.mark.parametrize(("identity", "expected"), list(SUBJECTS.items()))
def test_subject_key_pseudo_id_and_date_shift(
    identity: tuple[str, str, str], expected: tuple[str, str, int, str]
) -> None:
    value, _ = subject_identity(*identity)
    key, pseudo_id, shift, shifted = expected
    assert PS.key(value, "subject") == key
    assert PS.pseudo_id(value, "subject", "SUBJ") == pseudo_id
    assert PS.date_shift_days(value) == shift
    assert shift_da("20190315", shift) == shifted


@pytest.mark.parametrize(("given", "expected"), list(KEYS.items()))
def test_keys(given: tuple[str, str], expected: str) -> None:
    assert PS.key(*given) == expected


@pytest.mark.parametrize(("uid", "expected"), list(UIDS.items()))
def test_uids(uid: str, expected: str) -> None:
    assert PS.uid(uid) == expected
    assert map_uid(uid, PS) == expected
    assert len(expected) <= 64


def test_vectors_follow_the_documented_construction() -> None:
    """The doc's recipe (HMAC-SHA256 over ``kind NUL value``), written out with hashlib alone."""

    def digest(value: str, kind: str) -> bytes:
        return hmac.new(SECRET, kind.encode() + b"\x00" + value.encode(), hashlib.sha256).digest()

    assert digest(STUDY, "study").hex()[:16] == KEYS[(STUDY, "study")]
    assert "2.25." + str(int.from_bytes(digest(SERIES, "uid")[:16], "big")) == UIDS[SERIES]
    n = int.from_bytes(digest(f"{ISSUER}\x1e{PATIENT_ID}", "dateshift")[:8], "big")
    assert -(1 + n % 365) == SUBJECTS[(PATIENT_ID, ISSUER, STUDY)][2]


def test_deid_writes_the_vectors() -> None:
    """`imaging deid` uses the same derivation end to end: IDs, UIDs, dates, accession."""
    ds = ct_dataset(patient_id=PATIENT_ID, study_uid=STUDY, series_uid=SERIES)
    ds.SOPInstanceUID = SOP
    ds.IssuerOfPatientID = ISSUER
    ds.AccessionNumber = ACCESSION
    out = deidentify_dataset(ds, PS, DeidOptions())
    assert out is not None
    _key, pseudo_id, _shift, shifted = SUBJECTS[(PATIENT_ID, ISSUER, STUDY)]
    assert (out.PatientID, str(out.PatientName)) == (pseudo_id, pseudo_id)
    assert (out.StudyInstanceUID, out.SeriesInstanceUID, out.SOPInstanceUID) == (
        UIDS[STUDY],
        UIDS[SERIES],
        UIDS[SOP],
    )
    assert out.StudyDate == shifted
    assert out.AccessionNumber == KEYS[(ACCESSION, "accession")]
    assert map_uid(out.SOPClassUID, PS) == out.SOPClassUID  # well-known UIDs are kept
