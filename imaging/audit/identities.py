"""Identities read from the export's own headers, turned into the audit's needles.

An output that leaks a patient rarely carries the exact bytes of a header: a name
is written ``Seamus O'Brien`` or ``O'BRIEN_SEAMUS``, a birth date ``12.03.1957``.
So each identifying value becomes the forms it is commonly written in (name whole,
reversed and by component; dates in five layouts); :class:`~imaging.audit.needles.Needles`
then matches them case-insensitively with any of ``^ , _ -`` or spaces between
words. The values stay in memory: nothing here is written anywhere.

Headers are read with the structure of the project's fast reader
(:mod:`imaging.dicom.fastheader`): only groups 0008 and 0010 are walked, which
hold every identifying attribute below, so a file is read up to its first
element past group 0010. Anything unusual (big endian, other character sets, a
buffer too short) goes to pydicom with the same tags, so the needles never depend
on which path read a file (a unit test compares the two).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from pathlib import Path

from imaging.dicom import fastheader

log = logging.getLogger(__name__)

# tag -> (keyword, kind). All in groups 0008/0010, so the fast walk can stop early.
IDENTITY_TAGS: dict[int, tuple[str, str]] = {
    0x00080050: ("AccessionNumber", "id"),
    0x00080080: ("InstitutionName", "text"),
    0x00080081: ("InstitutionAddress", "address"),
    0x00080090: ("ReferringPhysicianName", "name"),
    0x00080092: ("ReferringPhysicianAddress", "address"),
    0x00081048: ("PhysiciansOfRecord", "name"),
    0x00081050: ("PerformingPhysicianName", "name"),
    0x00081060: ("NameOfPhysiciansReadingStudy", "name"),
    0x00081070: ("OperatorsName", "name"),
    0x00100010: ("PatientName", "name"),
    0x00100020: ("PatientID", "id"),
    0x00100021: ("IssuerOfPatientID", "id"),
    0x00100030: ("PatientBirthDate", "date"),
    0x00101000: ("OtherPatientIDs", "id"),
    0x00101001: ("OtherPatientNames", "name"),
    0x00101040: ("PatientAddress", "address"),
    0x00101060: ("PatientMotherBirthName", "name"),
    0x00102154: ("PatientTelephoneNumbers", "id"),
}
_KIND = {kw: kind for kw, kind in IDENTITY_TAGS.values()}
LAST_GROUP = 0x0010
MIN_COMPONENT = 3  # shorter name components (initials, 'Li', 'Mr') would hit everywhere
MIN_VALUE = 4  # IDs and whole values: the needles' own minimum
MIN_NUMBER = 6  # all-digit IDs: '1234' would hit every report with 1234 voxels or files
FIRST_READ = 16 << 10
# VRs with a 32-bit length in explicit VR (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_ENCODINGS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_WORDS = re.compile(r"[\s,\-]+")
# Name particles and titles of three letters name nobody on their own; nor do the words a
# pipeline's outputs are made of, when a name component happens to be one (the synthetic
# export's PatientName is ZZPHI^NAME^<mark>, and "name" is in every JSON). Whole names
# are still needles.
PARTICLES = frozenset({
    "van", "von", "der", "den", "del", "des", "dos", "das", "ten", "ter", "mrs", "the",
    "name", "names", "patient", "test", "none", "null", "unknown", "anonymous", "anonymized",
    "removed", "data", "image", "series", "study", "label", "model", "mask", "volume", "report",
    "error", "status", "file", "path", "value", "true", "false", "demo", "phantom", "synthetic",
})
_ADDRESS_PARTS = re.compile(r"[,;\n\r^\\]+")


class _Fallback(Exception):
    """Not a case for the fast walk: read the file with pydicom."""


def _walk_identity(buf: bytes) -> dict[str, list[str]]:
    """Identity values by keyword from a file's first bytes (a Part 10 file, little endian).

    Raises:
        _Fallback: anything the fast walk does not handle.
    """
    if buf[128:132] != b"DICM":
        raise _Fallback
    pos, ts = 132, None
    while pos + 12 <= len(buf):  # file meta: always explicit VR little endian
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group != 0x0002:
            break
        if buf[pos + 4 : pos + 6] in LONG_VRS:
            length, hdr = struct.unpack_from("<I", buf, pos + 8)[0], 12
        else:
            length, hdr = struct.unpack_from("<H", buf, pos + 6)[0], 8
        if elem == 0x0010:
            ts = buf[pos + hdr : pos + hdr + length].decode("ascii").rstrip(" \x00")
        pos += hdr + length
    if ts is None or not (ts in (fastheader.IMPLICIT_LE, fastheader.EXPLICIT_LE, "1.2.840.10008.1.2.5")
                          or ts.startswith("1.2.840.10008.1.2.4")):
        raise _Fallback
    return _walk_elements(buf, pos, explicit=ts != fastheader.IMPLICIT_LE)


def _walk_elements(buf: bytes, pos: int, explicit: bool) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    encoding = "latin-1"
    while pos + 8 <= len(buf):
        if explicit:
            group, elem, vr, length = struct.unpack_from("<HH2sH", buf, pos)
            hdr = 8
            if vr in LONG_VRS:
                length, hdr = struct.unpack_from("<I", buf, pos + 8)[0], 12
            elif not b"AA" <= vr <= b"ZZ":
                raise _Fallback
        else:
            group, elem, length = struct.unpack_from("<HHI", buf, pos)
            hdr = 8
        if group > LAST_GROUP:
            return out
        tag = group << 16 | elem
        if length == 0xFFFFFFFF:  # an undefined-length sequence: skip it as the fast reader does
            nested = explicit and not (hdr == 12 and buf[pos + 4 : pos + 6] == b"UN")
            try:
                pos = fastheader._skip_undefined(buf, pos + hdr, nested)
            except Exception as exc:  # NeedMore, its bail-out, a renamed helper: pydicom decides
                raise _Fallback from exc
            continue
        end = pos + hdr + length
        if end > len(buf):
            raise _Fallback
        raw = buf[pos + hdr : end]
        if tag == 0x00080005:
            charset = raw.decode("ascii", "replace").strip(" \x00")
            if charset not in _ENCODINGS:
                raise _Fallback  # ISO 2022 escapes, GB18030...: pydicom decodes them
            encoding = _ENCODINGS[charset]
        elif tag in IDENTITY_TAGS:
            text = raw.decode(encoding, "replace").strip(" \x00")
            if text:
                out[IDENTITY_TAGS[tag][0]] = [v.strip(" ") for v in text.split("\\") if v.strip(" ")]
        pos = end
    raise _Fallback  # the buffer ended inside group 0008/0010


def _read_pydicom(path: Path) -> dict[str, list[str]]:
    import pydicom
    from pydicom.multival import MultiValue

    ds = pydicom.dcmread(
        path, stop_before_pixels=True, force=True, specific_tags=[0x00080005, *IDENTITY_TAGS]
    )
    out: dict[str, list[str]] = {}
    for tag, (keyword, _kind) in IDENTITY_TAGS.items():
        elem = ds.get(tag)
        if elem is None or elem.value in (None, ""):
            continue
        values = list(elem.value) if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        texts = [str(v).strip(" ") for v in values if str(v).strip(" ")]
        if texts:
            out[keyword] = texts
    return out


def read_identity(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Identity values by keyword of one DICOM file (fast walk, else pydicom).

    Raises:
        pydicom.errors.InvalidDicomError, OSError: the file is not DICOM or cannot be read.
    """
    with open(path, "rb") as fh:
        buf = fh.read(FIRST_READ)
    try:
        return _walk_identity(buf)
    except Exception:  # _Fallback, a short buffer, a changed helper: pydicom reads every case
        return _read_pydicom(Path(path))


def _dicom_files(root: Path) -> Iterator[Path]:
    """Files that may be DICOM: a Part 10 preamble, a ``.dcm`` suffix, or no suffix at all
    (``IM0001``); DICOMDIR repeats what its images hold and is skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.upper() == "DICOMDIR":
                continue
            path = Path(dirpath) / name
            if name.lower().endswith(".dcm") or "." not in name:
                yield path
                continue
            with open(path, "rb") as fh:
                if fh.read(132)[128:132] == b"DICM":
                    yield path


def export_identities(root: str | os.PathLike[str]) -> dict[str, set[str]]:
    """Every distinct identity value of an export, by keyword (files that are not DICOM are skipped).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"audit: export '{base}' is not a folder")
    found: dict[str, set[str]] = {}
    unread = 0
    for path in _dicom_files(base):
        try:
            values = read_identity(path)
        except Exception:  # a damaged or non-DICOM file: counted, never named (its path is PHI)
            unread += 1
            continue
        for keyword, texts in values.items():
            found.setdefault(keyword, set()).update(texts)
    if unread:
        log.warning("audit: %d file(s) of the export could not be read for identities", unread)
    return found


def _ascii_fold(text: str) -> str:
    """``Müller`` -> ``Muller`` (outputs written by tools that drop accents)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def name_forms(value: str) -> tuple[list[str], list[str]]:
    """(whole-name forms, component forms) of a PN value: ``O'Brien^Seamus`` gives
    ``O'Brien Seamus``, ``Seamus O'Brien`` and the components ``O'Brien``, ``Seamus``
    (and ``OBrien``); prefixes and suffixes (``Dr``, ``Jr``) are not needles."""
    whole: list[str] = []
    parts: list[str] = []
    for group in value.split("="):  # alphabetic = ideographic = phonetic
        comps = [c.strip() for c in group.split("^")]
        names = [c for c in comps[:3] if c]  # family, given, middle
        if not names:
            continue
        whole.append(" ".join(names))
        if len(names) > 1:
            whole.append(" ".join(names[1:] + names[:1]))  # given (middle) family
        for comp in names:
            words = [w for w in _WORDS.split(comp) if w]
            parts += [comp] if len(words) == 1 else words  # 'van der Berg': its words
    return whole, [p for p in parts if len(p) >= MIN_COMPONENT and p.lower() not in PARTICLES]


def date_forms(value: str) -> list[str]:
    """``19570312`` -> the layouts a birth date is written in (ISO, German, British, US)."""
    digits = value.strip().replace(".", "").replace("-", "")
    try:
        day = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return [value]
    if len(digits) != 8:
        return [value]
    y, m, d = f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}"
    return [f"{y}{m}{d}", f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}",
            f"{y}.{m}.{d}", f"{y}/{m}/{d}"]


_GERMAN = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})


def _variants(text: str) -> list[str]:
    out = [text]
    folded = _ascii_fold(text)
    if folded != text:  # Müller is also written Muller, and Mueller
        out += [folded, text.translate(_GERMAN)] if text.translate(_GERMAN) != folded else [folded]
    if "'" in text or "\u2019" in text:  # O'Brien is also written OBrien and O’Brien
        out += [text.replace("'", "").replace("\u2019", ""), text.replace("'", "\u2019")]
    return out


def identity_needles(values: Mapping[str, Iterable[str]]) -> Iterator[tuple[str, str, int]]:
    """(needle, rule, minimum length) for each identity value; the rule is ``export <Keyword>``."""
    for keyword, texts in values.items():
        kind, rule = _KIND.get(keyword, "id"), f"export {keyword}"
        for text in texts:
            if kind == "name":
                whole, parts = name_forms(text)
                forms = [(f, MIN_VALUE) for f in whole] + [(p, MIN_COMPONENT) for p in parts]
            elif kind == "date":
                forms = [(f, MIN_VALUE) for f in date_forms(text)]
            elif kind == "address":
                pieces = [p.strip() for p in _ADDRESS_PARTS.split(text) if len(p.strip()) >= 6]
                forms = [(text, MIN_VALUE)] + [(p, MIN_VALUE) for p in pieces]
            elif text.strip().isdigit():  # a short number is a count or a size in any report
                forms = [(text, MIN_NUMBER)]
            else:
                forms = [(text, MIN_VALUE)]
            for form, minimum in forms:
                for variant in _variants(form):
                    yield variant, rule, minimum
