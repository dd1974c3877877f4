"""De-identify one DICOM dataset: PS3.15 Annex E basic profile, options, keyed pseudonyms.

The attribute table is :mod:`imaging.deid.profile` (all of Table E.1-1);
this module applies it, at every nesting level, with the keyed pseudonyms of
:class:`~imaging.keys.Pseudonymizer`:

- PatientID and PatientName become the same ``SUBJ-<key>`` pseudo ID, AccessionNumber
  a keyed hex string; every ``U`` UID (instance, series, study, frame of reference,
  references inside sequences) becomes a keyed ``2.25.`` UID unless it is a
  well-known UID of pydicom's UID dictionary (SOP classes, transfer syntaxes,
  coding schemes), so SEGs and registrations keep resolving after remapping.
- Retain Longitudinal Temporal Information with Modified Dates: every DA/DT
  value is moved by one per-subject number of days (intervals between one
  subject's studies are kept); times keep hours and minutes only, because
  seconds and fractions are distinctive enough to link records.
- Clean Descriptors uses a safe-word whitelist (:mod:`imaging.deid.values`):
  a descriptor keeps only words of :data:`DEFAULT_SAFE_WORDS` (plus configured
  ones) and technical tokens such as ``5mm`` or ``T1``; everything else (names,
  IDs, dates, free text) is dropped. A whitelist fails closed: an unknown word is
  lost rather than leaked.
- Private attributes are removed unless listed in the safe-private list.
- A sequence whose action is ``D`` (ContentSequence of an SR, GraphicAnnotationSequence)
  keeps its structure; the table applies inside and unlisted free text (an SR's
  TextValue) gets a dummy value, since ``D`` means dummy content.
- Beyond Table E.1-1: code items from private coding schemes (designator ``99...``,
  ``L``, ``LOCAL``) are institution-defined free text and are removed.

- PatientAge of 90 years and over becomes ``090Y`` unless ``keep_age_90_plus``.
- The subject (pseudo ID, date shift) is (IssuerOfPatientID, PatientID); an empty
  PatientID makes each study its own subject, with a warning
  (:func:`imaging.keys.subject_identity`).
- A kept safe-private sequence is walked like any other: the table applies inside.
- Embedded overlay planes and unused high bits are cleared from native pixel data
  (:mod:`imaging.deid.pixels`).

Instances that may carry burned-in text are withheld by the one policy of
:mod:`imaging.deid.withhold` (:func:`withhold_reason` gives the rule).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, UID_dictionary

from imaging.deid.options import DeidOptions, DeidStats, SafePrivate
from imaging.deid.pixels import clean_pixel_data
from imaging.deid.profile import (
    BASIC_PROFILE_CODE,
    MASKED_ROWS,
    OPTION_CODES,
    ROWS,
    Option,
    resolve_action,
)
from imaging.deid.values import (
    DEFAULT_SAFE_WORDS,
    cap_age,
    clean_text,
    shift_da,
    shift_dt,
    truncate_tm,
)
from imaging.deid.withhold import SECONDARY_CAPTURE_CLASSES, ULTRASOUND_CLASSES, check
from imaging.keys import Pseudonymizer, subject_identity

__all__ = [
    "DEFAULT_SAFE_WORDS",
    "DeidOptions",
    "DeidStats",
    "SECONDARY_CAPTURE_CLASSES",
    "ULTRASOUND_CLASSES",
    "SafePrivate",
    "clean_text",
    "deidentify_dataset",
    "shift_da",
    "shift_dt",
    "truncate_tm",
    "withhold_reason",
]

log = logging.getLogger(__name__)

# Options we implement; Clean Structured Content / Clean Graphics would need SR and
# graphic-annotation rewriting, so those rows fall back to their basic action.
SUPPORTED_OPTIONS = frozenset(Option) - {Option.CLEAN_STRUCTURED_CONTENT, Option.CLEAN_GRAPHICS}
_TEXT_VRS = {"LO", "SH", "LT", "ST", "UT", "UC", "PN", "CS", "AE"}
_FREE_TEXT_VRS = {"LT", "ST", "UT", "UC"}
_NEEDS_VALUE = _FREE_TEXT_VRS | {"DA", "DT"}  # unlisted VRs that dates shifts / dummy text touch
_MAX_LEN = {"SH": 16, "CS": 16, "AE": 16, "LO": 64, "PN": 64, "ST": 1024}
_DUMMY = {
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "AS": "000Y",
    "PN": "ANONYMIZED",
    "UR": "ANONYMIZED",
}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"}
_PRIVATE_SCHEME = re.compile(r"^(99|L$|LOCAL$)", re.IGNORECASE)
PATIENT_ID, PATIENT_NAME, ACCESSION = 0x00100020, 0x00100010, 0x00080050


@lru_cache(maxsize=16)
def action_plan(options: DeidOptions) -> dict[int, str]:
    """tag -> action for these options (built once per options object)."""
    enabled = options.enabled() & SUPPORTED_OPTIONS
    plan = {tag: resolve_action(basic, opts, enabled) for tag, _kw, basic, opts in ROWS}
    by_keyword = {kw: tag for tag, kw, _b, _o in ROWS}
    for keyword, action in options.overrides:
        tag = by_keyword.get(keyword) or tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"deid.overrides: '{keyword}' is not a DICOM keyword")
        plan[int(tag)] = action
    return plan


def _masked_action(tag: int, options: DeidOptions) -> tuple[str, str] | None:
    group, elem = tag >> 16, tag & 0xFFFF
    for g, e, basic, opts in MASKED_ROWS:
        if group >> 8 == int(g[:2], 16) and (e == "XXXX" or elem == int(e, 16)):
            name = {"50": "CurveData", "60": "Overlay" + ("Data" if e == "3000" else "Comments")}[
                g[:2]
            ]
            return name, resolve_action(basic, opts, options.enabled() & SUPPORTED_OPTIONS)
    return None


def withhold_reason(ds: Dataset, options: DeidOptions | None = None) -> str | None:
    """Why ``ds`` must not be released (``withheld by rule <name>: ...``), or None.

    Pixel data is never OCR-cleaned (no Clean Pixel Data option), so instances that
    may show text in their pixels are withheld instead (:func:`imaging.deid.withhold.check`).
    """
    options = options or DeidOptions()
    found = check(ds, options.policy())
    return str(found) if found else None


class _Context:
    """Per-dataset state: the subject's pseudonym and date shift, the safe-private list."""

    def __init__(self, ds: Dataset, pseudo: Pseudonymizer, options: DeidOptions, stats: DeidStats):
        self.pseudo, self.options, self.stats = pseudo, options, stats
        self.plan = action_plan(options)
        identity, per_study = subject_identity(
            str(ds.get("PatientID", "") or ""),
            str(ds.get("IssuerOfPatientID", "") or ""),
            str(ds.get("StudyInstanceUID", "") or ""),
        )
        if per_study:
            stats.count("PatientID", "empty: subject per study")
            log.warning("empty PatientID: this study becomes its own subject")
        self.subject = pseudo.pseudo_id(identity, "subject", options.subject_prefix)
        self.shift = (
            pseudo.date_shift_days(identity)
            if options.retain_longitudinal_modified_dates
            else None
        )
        self.safe_private = {(s.group, s.creator, s.element) for s in options.safe_private}
        self.safe_blocks = {(s.group, s.creator) for s in options.safe_private}
        self.dummy_text = False  # inside a sequence whose action is D

    def uid(self, value: str) -> str:
        return map_uid(value, self.pseudo, self.options)


def map_uid(value: str, pseudonymizer: Pseudonymizer, options: DeidOptions | None = None) -> str:
    """The UID the de-identification writes for ``value``: the keyed pseudonym UID, except
    well-known UIDs (transfer syntaxes, SOP classes...) and under ``retain_uids``."""
    value = str(value).strip()
    if not value or value in UID_dictionary or (options is not None and options.retain_uids):
        return value
    return pseudonymizer.uid(value)


def deidentify_dataset(
    ds: Dataset,
    pseudonymizer: Pseudonymizer,
    options: DeidOptions | None = None,
    stats: DeidStats | None = None,
) -> Dataset | None:
    """De-identify ``ds`` in place and return it, or return None when it is withheld.

    The withheld reason is :func:`withhold_reason` (also recorded in ``stats.withheld``
    and ``stats.last_reason``). The file meta (if any) is rebuilt to match the new
    SOP Instance UID.

    Raises:
        ValueError: an element cannot be parsed or de-identified; the message names the
            tag and VR, never the value.
    """
    options = options or DeidOptions()
    stats = stats if stats is not None else DeidStats()
    stats.last_reason = withhold_reason(ds, options)
    if stats.last_reason:
        stats.withheld[stats.last_reason] += 1
        return None
    if (why := clean_pixel_data(ds)) is not None:
        stats.last_reason = f"withheld by rule embedded-overlay: {why}"
        stats.withheld[stats.last_reason] += 1
        return None
    ctx = _Context(ds, pseudonymizer, options, stats)
    _walk(ds, ctx)
    if not options.keep_age_90_plus and ds.get("PatientAge"):
        capped = cap_age(str(ds.PatientAge))
        if capped != str(ds.PatientAge):
            ds.PatientAge = capped
            stats.count("PatientAge", "capped at 90")
    _mark(ds, options)
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta = _file_meta(ds)
    return ds


def _walk(ds: Dataset, ctx: _Context) -> None:
    # Elements are looked at raw (tag and VR) and parsed only when an action needs the
    # value: most of a header is kept as read, and parsing it would be most of the cost.
    for tag in list(ds.keys()):
        t = int(tag)
        raw = ds.get_item(tag, keep_deferred=True)
        vr: str | None = raw.VR
        try:
            if t >> 16 == 0x0002:
                continue  # file meta inside a dataset: rebuilt by _file_meta
            if tag.is_private:
                _private(ds, tag, ctx)
            elif t in (PATIENT_ID, PATIENT_NAME, ACCESSION):
                _pseudonym(ds[tag], ctx)
            elif t in ctx.plan:
                _apply(ds, ds[tag], ctx.plan[t], keyword_for_tag(t) or f"{t:08X}", ctx)
            elif (t >> 24) in (0x50, 0x60) and (masked := _masked_action(t, ctx.options)):
                _apply(ds, ds[tag], masked[1], masked[0], ctx)
            else:
                vr = vr or _dictionary_vr(t)
                if vr == "SQ" or (vr in _NEEDS_VALUE and (ctx.shift is not None or ctx.dummy_text)):
                    _unlisted(ds[tag], ctx)
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise ValueError(
                f"tag ({t >> 16:04X},{t & 0xFFFF:04X}) VR {vr}: {type(exc).__name__}"
            ) from exc
    _drop_private_codes(ds, ctx)


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None  # unknown public tag in an implicit-VR file: kept as read


def _apply(ds: Dataset, elem: DataElement, action: str, keyword: str, ctx: _Context) -> None:
    vr = elem.VR
    if action == "X":
        del ds[elem.tag]
        ctx.stats.count(keyword, "removed")
    elif action == "Z":
        elem.value = Sequence([]) if vr == "SQ" else None
        ctx.stats.count(keyword, "emptied")
    elif vr == "SQ":
        # D/U/K/C on a sequence: keep it and apply the profile to its items. Under D
        # (ContentSequence, GraphicAnnotationSequence) free text the table does not
        # list (e.g. an SR's TextValue) is replaced too: D means dummy content.
        outer = ctx.dummy_text
        ctx.dummy_text = outer or action == "D"
        try:
            for item in elem.value or []:
                _walk(item, ctx)
        finally:
            ctx.dummy_text = outer
        ctx.stats.count(keyword, "kept" if action == "K" else "cleaned")
    elif action == "K":
        ctx.stats.count(keyword, "kept")
    elif action == "U" or vr == "UI":
        _map_values(elem, ctx.uid)
        ctx.stats.count(keyword, "kept" if ctx.options.retain_uids else "remapped")
    elif action == "D":
        elem.value = _dummy(vr)
        ctx.stats.count(keyword, "replaced")
    else:  # C
        ctx.stats.count(keyword, _clean(elem, ctx))


def _clean(elem: DataElement, ctx: _Context) -> str:
    vr = elem.VR
    if vr in ("DA", "DT", "TM"):
        if ctx.options.retain_longitudinal_full_dates:
            return "kept"
        if ctx.shift is None:
            elem.value = None
            return "emptied"
        shift = ctx.shift
        fn = {
            "DA": lambda v: shift_da(v, shift),
            "DT": lambda v: shift_dt(v, shift),
            "TM": truncate_tm,
        }[vr]
        _map_values(elem, fn)
        return "shifted"
    if vr in _TEXT_VRS and vr != "PN":
        _map_values(elem, lambda v: clean_text(v, ctx.options.safe_words, _MAX_LEN.get(vr)))
        return "cleaned"
    if vr == "PN":
        elem.value = None
        return "emptied"
    return "kept"


def _unlisted(elem: DataElement, ctx: _Context) -> None:
    """Attributes outside Table E.1-1 are kept; dates still move with the subject."""
    if elem.VR == "SQ":
        for item in elem.value or []:
            _walk(item, ctx)
    elif ctx.dummy_text and elem.VR in _FREE_TEXT_VRS and elem.value not in (None, ""):
        elem.value = _dummy(elem.VR)
        ctx.stats.count(keyword_for_tag(elem.tag) or "UnlistedText", "replaced")
    elif elem.VR in ("DA", "DT") and ctx.shift is not None and elem.value not in (None, ""):
        fn = shift_da if elem.VR == "DA" else shift_dt
        _map_values(elem, lambda v: fn(v, ctx.shift or 0))
        ctx.stats.count(keyword_for_tag(elem.tag) or "UnlistedDate", "shifted")


def _pseudonym(elem: DataElement, ctx: _Context) -> None:
    keyword = keyword_for_tag(elem.tag)
    if elem.tag == ACCESSION:
        if elem.value:
            elem.value = ctx.pseudo.key(str(elem.value), "accession")
    else:
        elem.value = ctx.subject
    ctx.stats.count(keyword, "replaced")


def _private(ds: Dataset, tag: BaseTag, ctx: _Context) -> None:
    group, low = tag.group, tag.element
    if ctx.safe_private and 0x10 <= low <= 0xFF:  # a Private Creator element
        if (group, str(ds[tag].value).strip()) in ctx.safe_blocks:
            ctx.stats.count("PrivateCreator", "kept")
            return
    elif ctx.safe_private and low >= 0x1000:
        creator = ds.get((group, low >> 8))
        if (
            creator is not None
            and (group, str(creator.value).strip(), low & 0xFF) in ctx.safe_private
        ):
            elem = ds[tag]
            if elem.VR == "SQ":  # a kept sequence is cleaned inside like any other
                for item in elem.value or []:
                    _walk(item, ctx)
            ctx.stats.count("PrivateAttributes", "kept")
            return
    del ds[tag]
    ctx.stats.count("PrivateAttributes", "removed")


def _drop_private_codes(ds: Dataset, ctx: _Context) -> None:
    """Code items of private coding schemes are institution free text: remove them."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if tag.is_private or (raw.VR or _dictionary_vr(int(tag))) != "SQ":
            continue
        elem = ds[tag]
        if not elem.value:
            continue
        kept = [
            item
            for item in elem.value
            if not _PRIVATE_SCHEME.match(str(item.get("CodingSchemeDesignator", "")))
        ]
        if len(kept) != len(elem.value):
            ctx.stats.count("PrivateSchemeCodeItem", "removed")
            if kept:
                elem.value = Sequence(kept)
            else:  # a present code sequence needs 1-n items (dciodvfy): it goes
                del ds[tag]


def _map_values(elem: DataElement, fn: Any) -> None:
    value = elem.value
    if value is None or value == "":
        return
    if isinstance(value, (list, MultiValue)):
        elem.value = [fn(str(v)) for v in value]
    else:
        elem.value = fn(str(value))


def _dummy(vr: str) -> Any:
    if vr in _DUMMY:
        return _DUMMY[vr]
    if vr in _NUMERIC_VRS:
        return 0
    if vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
        return b"\x00\x00"
    return "ANONYMIZED"


def _mark(ds: Dataset, options: DeidOptions) -> None:
    """PatientIdentityRemoved, DeidentificationMethod(+CodeSequence), temporal flag (PS3.3 C.7.1.1)."""
    enabled = options.enabled() & SUPPORTED_OPTIONS
    codes = [BASIC_PROFILE_CODE] + [OPTION_CODES[o] for o in Option if o in enabled]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = ["imaging deid: PS3.15 E.1 Basic Profile"] + [
        m[:64] for _c, m in codes[1:]
    ]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    if options.retain_longitudinal_full_dates:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif options.retain_longitudinal_modified_dates:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"


def _file_meta(ds: Dataset) -> FileMetaDataset:
    old = ds.file_meta
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(
        str(ds.get("SOPClassUID", old.get("MediaStorageSOPClassUID")))
    )
    meta.MediaStorageSOPInstanceUID = UID(str(ds.get("SOPInstanceUID", "")))
    meta.TransferSyntaxUID = UID(str(old.get("TransferSyntaxUID") or _implied_syntax(ds)))
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "IMAGING_DEID"
    return meta


def _implied_syntax(ds: Dataset) -> str:
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit:
        return "1.2.840.10008.1.2"
    return "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"
