"""Value helpers of the de-identification: date shifts, time truncation, descriptor cleaning.

Clean Descriptors uses a safe-word whitelist (fails closed): a descriptor keeps
only words of :data:`DEFAULT_SAFE_WORDS` (plus configured ones) and technical
tokens such as ``5mm``, ``T1`` or ``b800``; names, IDs, dates and free text go.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, timedelta

# Words of series/study/protocol descriptions that identify nobody (lowercase).
_SAFE_WORDS_TEXT = """
    ct mr mri pet spect us cr dx mg nm xa rf ot seg pt sr rtstruct pr abdomen abd pelvis
    chest thorax thx lung lungs liver spleen kidney kidneys renal brain head neck spine
    cervical thoracic lumbar sacrum heart cardiac coronary aorta knee hip shoulder ankle
    wrist hand foot elbow breast prostate pancreas bladder whole body wb wholebody extremity
    sinus orbit temporal bone bones soft tissue axial ax sagittal sag coronal cor oblique
    obl transverse tra 3d 2d mpr mip minip vr t1 t2 t1w t2w pd pdw flair stir dwi adc dti
    swi gre se tse fse spgr mprage space vibe haste trufi fiesta bold perfusion asl tof mra
    cta ctp venous arterial portal pv delayed late early phase native plain pre post
    contrast c+ c- iv oral non nc fat sat fs water dixon in out opp ip op inphase outphase
    subtraction sub localizer localiser scout topogram survey tracker bolus monitoring
    calibration recon reconstruction thin thick standard std soft sharp bone lung
    mediastinum kernel iterative filtered fbp helical spiral sequential dynamic static low
    high dose ldct hrct angio angiography venography perfusion map maps derived primary
    secondary original summary report segmentation mask label left right lt rt l r bilateral
    bil upper lower mid and with without w wo volume vol series study exam examination
    protocol routine screening followup follow up baseline diffusion weighted trace exp mean
    average avg
"""
DEFAULT_SAFE_WORDS = frozenset(_SAFE_WORDS_TEXT.split())
# Tokens kept by Clean Descriptors without being words: small numbers WITH units,
# sequence parameters, b-values, matrix sizes. A bare number is dropped: "12 05 23"
# is a date, "4711" a room or an ID, and no run of 5+ digits gets through.
_TECHNICAL = re.compile(
    r"\d{1,3}([.,]\d{1,3})?(mm|cm|ml|s|ms|kv|kvp|mas|t|deg|%|x)|b\d{1,4}|\d{1,4}x\d{1,4}|"
    r"[tT][12][wW]?|\d{1,2}d|\d\.\d",  # last: a field strength / thickness such as 1.5 or 3.0
    re.IGNORECASE,
)
_AGE = re.compile(r"^(\d{3})Y$")
AGE_CAP_YEARS = 90
_TOKEN_SPLIT = re.compile(r"[\s^_/\\,;:|()\[\]{}\"'=<>@#*]+")


def shift_da(value: str, days: int) -> str:
    """Move a DA value (``YYYYMMDD``, also legacy ``YYYY.MM.DD``) by ``days``; unparsable -> ''."""
    digits = value.strip().replace(".", "")
    try:
        day = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return ""
    if len(digits) != 8:
        return ""
    return (day + timedelta(days=days)).strftime("%Y%m%d")


def shift_dt(value: str, days: int) -> str:
    """Move the date part of a DT by ``days``; the time keeps hours and minutes, the offset stays.

    A DT with less than a full date cannot be shifted consistently and becomes ''.
    """
    value = value.strip()
    offset = ""
    match = re.search(r"[+-]\d{4}$", value)
    if match:
        value, offset = value[: match.start()], match.group()
    shifted = shift_da(value[:8], days) if len(value) >= 8 else ""
    if not shifted:
        return ""
    return shifted + value[8:12] + offset


def truncate_tm(value: str) -> str:
    """Keep hours and minutes of a TM (``HHMM``); legacy ``HH:MM`` is accepted."""
    digits = value.strip().replace(":", "")
    return digits[:4] if digits[:2].isdigit() else ""


def cap_age(value: str) -> str:
    """An AS age of 90 years or more becomes ``090Y`` (others are returned unchanged)."""
    match = _AGE.match(value.strip())
    if match and int(match.group(1)) >= AGE_CAP_YEARS:
        return f"{AGE_CAP_YEARS:03d}Y"
    return value


def clean_text(
    value: str, safe_words: Iterable[str] = DEFAULT_SAFE_WORDS, max_len: int | None = None
) -> str:
    """Keep only safe words and technical tokens of a descriptor (fails closed)."""
    words = safe_words if isinstance(safe_words, (set, frozenset)) else set(safe_words)
    kept = [
        tok
        for tok in _TOKEN_SPLIT.split(value)
        if tok and (tok.lower() in words or _TECHNICAL.fullmatch(tok))
    ]
    text = " ".join(kept)
    return text[:max_len] if max_len else text
