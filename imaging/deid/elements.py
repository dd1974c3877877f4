"""Per-dataset de-identification state and the actions on one element's value.

:class:`DeidContext` holds what one dataset's walk (:mod:`imaging.deid.apply`) needs: the
subject's pseudonym and date shift, the action plan, the safe-private list. The functions
here change one element's value in place (clean, dummy, pseudonym, UID mapping) and never
recurse into sequences: the walk does.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID_dictionary

from imaging.deid.options import DeidOptions, DeidStats
from imaging.deid.plan import action_plan
from imaging.deid.values import clean_text, shift_da, shift_dt, truncate_tm
from imaging.keys import Pseudonymizer, subject_identity

log = logging.getLogger(__name__)

_TEXT_VRS = {"LO", "SH", "LT", "ST", "UT", "UC", "PN", "CS", "AE"}
FREE_TEXT_VRS = {"LT", "ST", "UT", "UC"}
NEEDS_VALUE = FREE_TEXT_VRS | {"DA", "DT"}  # unlisted VRs that dates shifts / dummy text touch
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
PATIENT_ID, PATIENT_NAME, ACCESSION = 0x00100020, 0x00100010, 0x00080050


class DeidContext:
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


def clean_element(elem: DataElement, ctx: DeidContext) -> str:
    """Action C on one element; returns what was done (the word counted in the stats)."""
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
        map_values(elem, fn)
        return "shifted"
    if vr in _TEXT_VRS and vr != "PN":
        map_values(elem, lambda v: clean_text(v, ctx.options.safe_words, _MAX_LEN.get(vr)))
        return "cleaned"
    if vr == "PN":
        elem.value = None
        return "emptied"
    return "kept"


def pseudonymize(elem: DataElement, ctx: DeidContext) -> None:
    """PatientID and PatientName become the subject's pseudo ID, AccessionNumber a keyed string."""
    keyword = keyword_for_tag(elem.tag)
    if elem.tag == ACCESSION:
        if elem.value:
            elem.value = ctx.pseudo.key(str(elem.value), "accession")
    else:
        elem.value = ctx.subject
    ctx.stats.count(keyword, "replaced")


def map_values(elem: DataElement, fn: Any) -> None:
    """``fn`` on each value of an element (one or several); an empty element stays empty."""
    value = elem.value
    if value is None or value == "":
        return
    if isinstance(value, (list, MultiValue)):
        elem.value = [fn(str(v)) for v in value]
    else:
        elem.value = fn(str(value))


def dummy_value(vr: str) -> Any:
    """The value action D writes for a VR."""
    if vr in _DUMMY:
        return _DUMMY[vr]
    if vr in _NUMERIC_VRS:
        return 0
    if vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
        return b"\x00\x00"
    return "ANONYMIZED"
