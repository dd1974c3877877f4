"""Audit one DICOM file: every element, nested sequences, private tags.

Besides the needles (canaries, original values) two pattern rules need no list
of originals:

- ``person-name``: a non-empty PN value that is not a pseudonym (``SUBJ-<hex>``)
  nor a dummy (``ANONYMIZED``...).
- ``date``: a non-empty PatientBirthDate (no option retains it), or a non-empty
  DA/DT value of another Table E.1-1 date attribute in a file that does not
  declare its dates handled (PatientIdentityRemoved YES and
  LongitudinalTemporalInformationModified MODIFIED or UNMODIFIED).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from imaging.audit.needles import Hit, Needles, mask
from imaging.deid.profile import OPTION_COLUMNS, ROWS, Option

_MODIF = OPTION_COLUMNS.index(Option.RETAIN_LONGITUDINAL_MODIFIED_DATES)
PROFILE_DATE_TAGS = frozenset(tag for tag, _kw, _b, opts in ROWS if opts[_MODIF] != ".")
# Dates no option retains (PatientBirthDate): any non-empty value is a hit.
ALWAYS_DATE_TAGS = frozenset(
    tag for tag, _kw, _b, opts in ROWS if opts[_MODIF] == "." and dictionary_VR(tag) in ("DA", "DT")
)
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010, 0xFFFAFFFA, 0xFFFCFFFC})
_BINARY_VRS = {"OB", "OW", "UN", "OD", "OF", "OL", "OV"}
_MAX_BINARY = 1 << 20  # private blobs above 1 MiB are scanned as raw bytes by the caller's fallback
_PSEUDONYM = re.compile(r"^[A-Z][A-Z0-9]*-[0-9a-f]{6,}$")
DUMMY_NAMES = frozenset({"ANONYMIZED", "ANONYMOUS", "REMOVED", "DEIDENTIFIED", "UNKNOWN"})
DUMMY_DATES = frozenset({"19000101", "19000101000000"})


def _tag_name(elem: pydicom.DataElement) -> str:
    tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
    return f"{tag} {elem.keyword}" if elem.keyword else tag


def _values(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, MultiValue)):
        return [str(v) for v in value if v is not None and str(v) != ""]
    return [str(value)] if str(value) != "" else []


def _dates_declared(ds: Dataset) -> bool:
    removed = str(ds.get("PatientIdentityRemoved", "")).upper() == "YES"
    temporal = str(ds.get("LongitudinalTemporalInformationModified", "")).upper()
    return removed and temporal in ("MODIFIED", "UNMODIFIED")


def scan_dataset(
    ds: Dataset,
    where: str,
    needles: Needles,
    patterns: bool = True,
    prefix: str = "",
    dates_ok: bool | None = None,
) -> Iterator[Hit]:
    """Yield the hits of ``ds`` and its sequences (``where`` names the file)."""
    if dates_ok is None:
        dates_ok = _dates_declared(ds)
    for tag in list(ds.keys()):
        if int(tag) in PIXEL_TAGS:
            continue  # checked before access: reading a deferred element loads it
        elem = ds[tag]
        name = prefix + _tag_name(elem)
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                yield from scan_dataset(item, where, needles, patterns, f"{name}[{i}]>", dates_ok)
            continue
        if elem.VR in _BINARY_VRS:
            raw = elem.value if isinstance(elem.value, bytes) else b""
            texts = [raw[:_MAX_BINARY].decode("latin-1")] if raw else []
        else:
            texts = _values(elem.value)
        for text in texts:
            for rule, found in needles.find(text):
                yield Hit(where, name, rule, mask(found, rule))
            if not patterns:
                continue
            if elem.VR == "PN" and text.strip() and not _pseudonymous(text):
                yield Hit(where, name, "person-name", mask(text, "person-name"))
            elif (
                elem.VR in ("DA", "DT")
                and (
                    int(elem.tag) in ALWAYS_DATE_TAGS
                    or (int(elem.tag) in PROFILE_DATE_TAGS and not dates_ok)
                )
                and text.strip()
                and text.strip() not in DUMMY_DATES
            ):
                yield Hit(where, name, "date", mask(text, "date"))


def _pseudonymous(name: str) -> bool:
    value = name.strip().strip("^").strip()
    return bool(_PSEUDONYM.match(value)) or value.upper() in DUMMY_NAMES


def scan_dicom(path: Path | IO[bytes], needles: Needles, patterns: bool = True) -> Iterator[Hit]:
    """Hits of one DICOM file or stream (file meta included).

    Raises:
        pydicom.errors.InvalidDicomError, OSError, ValueError: the file cannot be parsed
            (the caller falls back to a raw byte scan).
    """
    ds = pydicom.dcmread(path, force=True, defer_size=_MAX_BINARY)
    where = str(path)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        yield from scan_dataset(meta, where, needles, patterns=False)
    yield from scan_dataset(ds, where, needles, patterns)
