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

This module walks a dataset (every nesting level, private blocks, private code items);
the action for each tag is :mod:`imaging.deid.plan`, what an action does to one value
:mod:`imaging.deid.elements`, the marks a de-identified dataset carries :mod:`imaging.deid.marking`.
"""

from __future__ import annotations

import re

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from imaging.deid.elements import (
    ACCESSION,
    FREE_TEXT_VRS,
    NEEDS_VALUE,
    PATIENT_ID,
    PATIENT_NAME,
    DeidContext,
    clean_element,
    dummy_value,
    map_values,
    pseudonymize,
)
from imaging.deid.marking import mark_deidentified, rebuilt_file_meta
from imaging.deid.options import DeidOptions, DeidStats, SafePrivate
from imaging.deid.pixels import clean_pixel_data
from imaging.deid.plan import masked_action
from imaging.deid.values import (
    DEFAULT_SAFE_WORDS,
    cap_age,
    clean_text,
    shift_da,
    shift_dt,
    truncate_tm,
)
from imaging.deid.withhold import SECONDARY_CAPTURE_CLASSES, ULTRASOUND_CLASSES, check
from imaging.keys import Pseudonymizer

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

_PRIVATE_SCHEME = re.compile(r"^(99|L$|LOCAL$)", re.IGNORECASE)


def withhold_reason(ds: Dataset, options: DeidOptions | None = None) -> str | None:
    """Why ``ds`` must not be released (``withheld by rule <name>: ...``), or None.

    Pixel data is never OCR-cleaned (no Clean Pixel Data option), so instances that
    may show text in their pixels are withheld instead (:func:`imaging.deid.withhold.check`).
    """
    options = options or DeidOptions()
    found = check(ds, options.policy())
    return str(found) if found else None


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
    ctx = DeidContext(ds, pseudonymizer, options, stats)
    _walk(ds, ctx)
    if not options.keep_age_90_plus and ds.get("PatientAge"):
        capped = cap_age(str(ds.PatientAge))
        if capped != str(ds.PatientAge):
            ds.PatientAge = capped
            stats.count("PatientAge", "capped at 90")
    mark_deidentified(ds, options)
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta = rebuilt_file_meta(ds)
    return ds


def _walk(ds: Dataset, ctx: DeidContext) -> None:
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
                pseudonymize(ds[tag], ctx)
            elif t in ctx.plan:
                _apply(ds, ds[tag], ctx.plan[t], keyword_for_tag(t) or f"{t:08X}", ctx)
            elif (t >> 24) in (0x50, 0x60) and (masked := masked_action(t, ctx.options)):
                _apply(ds, ds[tag], masked[1], masked[0], ctx)
            else:
                vr = vr or _dictionary_vr(t)
                if vr == "SQ" or (vr in NEEDS_VALUE and (ctx.shift is not None or ctx.dummy_text)):
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


def _apply(ds: Dataset, elem: DataElement, action: str, keyword: str, ctx: DeidContext) -> None:
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
        map_values(elem, ctx.uid)
        ctx.stats.count(keyword, "kept" if ctx.options.retain_uids else "remapped")
    elif action == "D":
        elem.value = dummy_value(vr)
        ctx.stats.count(keyword, "replaced")
    else:  # C
        ctx.stats.count(keyword, clean_element(elem, ctx))



def _unlisted(elem: DataElement, ctx: DeidContext) -> None:
    """Attributes outside Table E.1-1 are kept; dates still move with the subject."""
    if elem.VR == "SQ":
        for item in elem.value or []:
            _walk(item, ctx)
    elif ctx.dummy_text and elem.VR in FREE_TEXT_VRS and elem.value not in (None, ""):
        elem.value = dummy_value(elem.VR)
        ctx.stats.count(keyword_for_tag(elem.tag) or "UnlistedText", "replaced")
    elif elem.VR in ("DA", "DT") and ctx.shift is not None and elem.value not in (None, ""):
        fn = shift_da if elem.VR == "DA" else shift_dt
        map_values(elem, lambda v: fn(v, ctx.shift or 0))
        ctx.stats.count(keyword_for_tag(elem.tag) or "UnlistedDate", "shifted")


def _private(ds: Dataset, tag: BaseTag, ctx: DeidContext) -> None:
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


def _drop_private_codes(ds: Dataset, ctx: DeidContext) -> None:
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
