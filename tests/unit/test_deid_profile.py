"""Table-driven: every attribute of PS3.15 Table E.1-1, at top level and nested, under
the basic profile and under each option column we implement."""

from __future__ import annotations

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from imaging.deid.apply import DeidOptions, deidentify_dataset
from imaging.deid.plan import SUPPORTED_OPTIONS
from imaging.deid.profile import MASKED_ROWS, OPTION_COLUMNS, ROWS, Option, resolve_action
from imaging.keys import Pseudonymizer
from tests.unit.deid_factory import CANARY, SECRET

PSEUDO = Pseudonymizer(SECRET)
NO_OPTIONS = DeidOptions(
    retain_longitudinal_modified_dates=False,
    retain_patient_characteristics=False,
    clean_descriptors=False,
)
# The documented choice for the IOD-dependent combinations (valid for the strictest Type).
EXPECTED_BASIC = {"X": "X", "Z": "Z", "D": "D", "U": "U", "K": "K", "C": "C",
                  "X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}  # fmt: skip
SPECIAL = {"PatientID", "PatientName", "AccessionNumber"}
# Rows tested in the dataset body (group 0002 lives in the file meta, tested separately).
BODY_ROWS = [r for r in ROWS if r[0] >> 16 != 0x0002]
OPTION_FLAGS = {
    Option.RETAIN_UIDS: "retain_uids",
    Option.RETAIN_DEVICE_IDENTITY: "retain_device_identity",
    Option.RETAIN_INSTITUTION_IDENTITY: "retain_institution_identity",
    Option.RETAIN_PATIENT_CHARACTERISTICS: "retain_patient_characteristics",
    Option.RETAIN_LONGITUDINAL_FULL_DATES: "retain_longitudinal_full_dates",
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: "retain_longitudinal_modified_dates",
    Option.CLEAN_DESCRIPTORS: "clean_descriptors",
}


def _vr(tag: int) -> str:
    return dictionary_VR(tag).split(" or ")[0]


def _value(vr: str) -> object:
    samples = {
        "DA": "20190315", "DT": "20190315081317.123456", "TM": "081317.000001", "PN": f"{CANARY}^Test",
        "AS": "045Y", "DS": "1.5", "IS": "3", "CS": f"{CANARY} CT", "UR": f"http://{CANARY}.example",
        "AT": 0x00100010, "OB": CANARY.encode() + b"xx", "OW": CANARY.encode() + b"xx",
        "UN": CANARY.encode() + b"xx", "OF": b"\x00" * 4, "OD": b"\x00" * 8, "OL": b"\x00" * 4,
        "OV": b"\x00" * 8,
    }  # fmt: skip
    if vr == "UI":
        return generate_uid()
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 7
    if vr in ("FL", "FD"):
        return 7.5
    if vr == "SQ":
        item = Dataset()
        item.CodeValue = "X1"
        return Sequence([item])
    return samples.get(vr, f"{CANARY} text CT")


def _dataset(tag: int) -> tuple[Dataset, object]:
    ds = Dataset()
    vr = _vr(tag)
    ds.add_new(tag, vr, _value(vr))
    ds.PatientID = f"{CANARY}PID"
    return ds, ds[tag].value


def _empty(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, (list, Sequence)) and len(value) == 0)


def _check(out: Dataset, tag: int, keyword: str, action: str, original: object) -> None:
    vr = _vr(tag)
    where = f"{keyword} ({tag:08X}) action {action}"
    if keyword in SPECIAL:
        assert str(out[tag].value) != str(original) and CANARY not in str(out[tag].value), where
        return
    if action == "X":
        assert tag not in out, where
        return
    assert tag in out, where
    value = out[tag].value
    if action == "Z":
        assert _empty(value), where
    elif vr == "SQ":
        assert len(value) == 1 and value[0].CodeValue == "X1", where  # kept, items de-identified
    elif action == "K" or (vr == "UI" and action == "C"):
        assert value == original, where
    elif action == "U" or vr == "UI":
        assert str(value).startswith("2.25.") and value != original, where
    elif action == "D":
        assert (
            not _empty(value) and value != original and CANARY.encode() not in str(value).encode()
        ), where
    elif action == "C":
        _check_clean(vr, value, original, where)
    else:
        raise AssertionError(f"unexpected action {action} for {where}")


def _check_clean(vr: str, value: object, original: object, where: str) -> None:
    if vr == "DA":
        assert value != original and len(value) == 8, where  # shifted
    elif vr == "DT":
        assert str(value)[:8] != str(original)[:8] and str(value).startswith(("20", "19")), where
    elif vr == "TM":
        assert value == "0813", where  # hours and minutes kept
    elif vr in ("LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE"):
        assert CANARY not in str(value) and "CT" in str(value), where  # whitelist kept 'CT'
    elif vr == "PN":
        assert _empty(value), where
    else:
        assert value == original, where


def test_table_is_complete_and_matches_the_standard() -> None:
    assert len(ROWS) == 617 and len({r[0] for r in ROWS}) == 617
    assert len(MASKED_ROWS) == 3
    by_kw = {kw: (basic, opts) for _t, kw, basic, opts in ROWS}
    for _tag, kw, basic, opts in ROWS:
        assert tag_for_keyword(kw) == _tag, kw
        assert basic in EXPECTED_BASIC, kw
        assert len(opts) == len(OPTION_COLUMNS) and set(opts) <= {".", "K", "C"}, kw
    # Spot checks against PS3.15 Table E.1-1 as printed.
    assert by_kw["PatientName"][0] == "Z"
    assert by_kw["PatientID"][0] == "Z/D"
    assert by_kw["PatientBirthDate"][0] == "Z"
    assert by_kw["StudyInstanceUID"] == ("U", ".K........")
    assert by_kw["SeriesDescription"] == ("X", ".......C..")
    assert by_kw["StudyDate"] == ("Z", ".....KC...")
    assert by_kw["PatientAge"] == ("X", "....K.....")
    assert by_kw["SourceImageSequence"][0] == "X/Z/U*"
    assert by_kw["InstitutionName"] == ("X/Z/D", "...K......")


@pytest.mark.parametrize(
    ("basic", "opts", "enabled", "expected"),
    [
        ("X/Z", "..........", set(), "Z"),
        ("X/D", "..........", set(), "D"),
        ("X/Z/D", "..........", set(), "D"),
        ("X/Z/U*", ".K........", set(), "U"),
        ("X/Z/U*", ".K........", {Option.RETAIN_UIDS}, "K"),
        ("Z", ".....KC...", {Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}, "C"),
        ("Z", ".....KC...", {Option.RETAIN_LONGITUDINAL_FULL_DATES}, "K"),
        ("X", "....C..C..", {Option.CLEAN_DESCRIPTORS}, "C"),
        ("X", ".......C..", set(), "X"),
    ],
)
def test_resolve_action(basic: str, opts: str, enabled: set[Option], expected: str) -> None:
    assert resolve_action(basic, opts, frozenset(enabled)) == expected


@pytest.mark.parametrize("row", BODY_ROWS, ids=[r[1] for r in BODY_ROWS])
def test_basic_profile_every_attribute(row: tuple[int, str, str, str]) -> None:
    tag, keyword, basic, _opts = row
    expected = EXPECTED_BASIC[basic]
    ds, original = _dataset(tag)
    out = deidentify_dataset(ds, PSEUDO, NO_OPTIONS)
    assert out is not None
    _check(out, tag, keyword, expected, original)
    # The same attribute inside a sequence the table keeps: the profile applies there too.
    inner, original = _dataset(tag)
    outer = Dataset()
    outer.ReferencedSeriesSequence = Sequence([inner])
    out = deidentify_dataset(outer, PSEUDO, NO_OPTIONS)
    assert out is not None
    _check(out.ReferencedSeriesSequence[0], tag, keyword, expected, original)


OPTION_CASES = [
    (opt, row)
    for opt in OPTION_FLAGS
    for row in BODY_ROWS
    if row[3][OPTION_COLUMNS.index(opt)] != "." and row[1] not in SPECIAL
]


@pytest.mark.parametrize("case", OPTION_CASES, ids=[f"{o.value}-{r[1]}" for o, r in OPTION_CASES])
def test_option_columns(case: tuple[Option, tuple[int, str, str, str]]) -> None:
    option, (tag, keyword, _basic, opts) = case
    flags = {f: False for f in OPTION_FLAGS.values()}
    flags[OPTION_FLAGS[option]] = True
    options = DeidOptions(**flags)
    expected = opts[OPTION_COLUMNS.index(option)]
    ds, original = _dataset(tag)
    out = deidentify_dataset(ds, PSEUDO, options)
    assert out is not None
    _check(out, tag, keyword, expected, original)


def test_unsupported_options_fall_back_to_the_basic_action() -> None:
    assert Option.CLEAN_GRAPHICS not in SUPPORTED_OPTIONS
    ds = Dataset()
    ds.add_new(0x60003000, "OW", b"\x01\x02")  # Overlay Data
    ds.add_new(0x60024000, "LT", f"{CANARY} overlay")  # Overlay Comments, second overlay group
    ds.add_new(0x50000010, "US", 3)  # Curve Data (retired repeating group)
    ds.add_new(0x60000010, "US", 8)  # Overlay Rows: not in the table, kept
    out = deidentify_dataset(ds, PSEUDO, DeidOptions())
    assert out is not None
    assert 0x60003000 not in out and 0x60024000 not in out and 0x50000010 not in out
    assert out[0x60000010].value == 8


def test_private_attributes_removed_by_default() -> None:
    ds = Dataset()
    block = ds.private_block(0x0011, f"{CANARY} CREATOR", create=True)
    block.add_new(0x01, "LO", CANARY)
    out = deidentify_dataset(ds, PSEUDO, DeidOptions())
    assert out is not None and not any(e.tag.is_private for e in out)
