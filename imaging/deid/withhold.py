"""One withholding policy for `imaging deid` and `imaging ingest`: what may show a face or text.

Pixel data is never OCR-cleaned (no Clean Pixel Data option), so instances whose
pixels may carry burned-in text, or a recognisable face, are withheld. Each rule
has a name; the deid audit and the ingest catalog give the rule name as the
reason, so a user can allow-list exactly what their site has checked:

=========================  =====================================================
rule                       withholds
=========================  =====================================================
burned-in-annotation       (0028,0301) BurnedInAnnotation = YES
recognizable-features      (0028,0302) RecognizableVisualFeatures = YES
secondary-capture          Secondary Capture SOP classes (screenshots)
screen-save                (0008,0008) ImageType with SCREEN SAVE, or DERIVED\\SECONDARY
                           (screenshots stored as CT/MR, e.g. CT dose reports)
dose-report                a dose report/screen by ImageType (DOSE ...) or description
risky-modality             XA RF CR DX MG NM OT XC ES US IO PX GM SM ... (text or
                           faces often in the pixels) unless in ``allow_modalities``
=========================  =====================================================

``allow_rules`` switches a whole rule off (e.g. ``screen-save`` for a site whose
derived reconstructions are all checked); ``allow_modalities`` releases modalities.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

SECONDARY_CAPTURE_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
})
ULTRASOUND_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.6.2",
    "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.6",
    "1.2.840.10008.5.1.4.1.1.3",
})
# Projection X-ray, nuclear medicine, photographs, endoscopy, ultrasound, "other":
# annotations are burned in routinely, and photographs may show faces.
RISKY_MODALITIES = frozenset({
    "XA", "RF", "CR", "DX", "MG", "NM", "OT", "XC", "ES", "US", "IO", "PX", "GM", "SM",
    "DOC", "ECG", "OP", "OPT", "TG", "BDUS", "IVUS",
})
RULES = (
    "burned-in-annotation",
    "recognizable-features",
    "secondary-capture",
    "screen-save",
    "dose-report",
    "risky-modality",
)
_DOSE_TEXT = re.compile(r"\bdose\s*(report|info|summary|screen)|\bpatient\s*protocol\b|\bexam\s*summary\b",
                        re.IGNORECASE)


@dataclass(frozen=True)
class WithholdPolicy:
    """Which rules are in force and which modalities are released.

    Attributes:
        allow_rules: rule names switched off.
        allow_modalities: modalities released from ``risky-modality``.
    """

    allow_rules: frozenset[str] = frozenset()
    allow_modalities: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.allow_rules) - set(RULES)
        if unknown:
            raise ValueError(f"withhold.allow_rules: unknown rule(s) {sorted(unknown)}; known: {list(RULES)}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None, allow_ultrasound: bool = False) -> WithholdPolicy:
        """From ``{allow_rules: [...], allow_modalities: [...]}``; ``allow_ultrasound`` adds US.

        Raises:
            ValueError: an unknown key or rule name.
        """
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"allow_rules", "allow_modalities"}
        if unknown:
            raise ValueError(f"withhold: unknown key(s) {sorted(unknown)}; known: allow_rules, allow_modalities")
        mods = {str(m).upper() for m in cfg.get("allow_modalities") or ()}
        if allow_ultrasound:
            mods.add("US")
        return cls(frozenset(str(r) for r in cfg.get("allow_rules") or ()), frozenset(mods))


@dataclass(frozen=True)
class Withheld:
    """Why an instance or series is withheld: the rule name and a short explanation (no values)."""

    rule: str
    detail: str

    def __str__(self) -> str:
        return f"withheld by rule {self.rule}: {self.detail}"


def _words(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip().upper() for v in value.split("\\")]
    if isinstance(value, Iterable):
        return [str(v).strip().upper() for v in value]
    return [str(value).strip().upper()]


def check(attrs: Mapping[str, Any] | Dataset, policy: WithholdPolicy | None = None) -> Withheld | None:
    """The first rule that withholds an instance with these attributes, or None.

    Args:
        attrs: keyword -> value (a pydicom Dataset works too): BurnedInAnnotation,
            RecognizableVisualFeatures, SOPClassUID, ImageType, Modality, SeriesDescription.
        policy: rules switched off and modalities released (default: everything on).
    """
    policy = policy or WithholdPolicy()
    on = [r for r in RULES if r not in policy.allow_rules]
    get = attrs.get
    image_type = _words(get("ImageType"))
    sop_class = str(get("SOPClassUID") or "").strip()
    modality = str(get("Modality") or "").strip().upper()
    found: list[Withheld] = []
    if str(get("BurnedInAnnotation") or "").strip().upper() == "YES":
        found.append(Withheld("burned-in-annotation", "(0028,0301) BurnedInAnnotation is YES (text in the pixels)"))
    if str(get("RecognizableVisualFeatures") or "").strip().upper() == "YES":
        found.append(Withheld("recognizable-features", "(0028,0302) RecognizableVisualFeatures is YES"))
    if sop_class in SECONDARY_CAPTURE_CLASSES:
        found.append(Withheld("secondary-capture",
                              "Secondary Capture SOP class (screenshots may carry burned-in text)"))
    if "SCREEN SAVE" in image_type or image_type[:2] == ["DERIVED", "SECONDARY"]:
        found.append(Withheld("screen-save", "(0008,0008) ImageType is SCREEN SAVE or DERIVED\\SECONDARY"))
    if any(w.startswith("DOSE") for w in image_type) or _DOSE_TEXT.search(str(get("SeriesDescription") or "")):
        found.append(Withheld("dose-report", "a dose report screen (ImageType or SeriesDescription)"))
    if (modality in RISKY_MODALITIES or sop_class in ULTRASOUND_CLASSES) and modality not in policy.allow_modalities \
            and not (sop_class in ULTRASOUND_CLASSES and "US" in policy.allow_modalities):
        found.append(Withheld("risky-modality", f"(0008,0060) Modality {modality or 'US'} often carries burned-in "
                              "text; release with withhold.allow_modalities"))
    for w in found:
        if w.rule in on:
            return w
    return None


POLICY_KEYWORDS = (
    "SOPClassUID", "Modality", "ImageType", "BurnedInAnnotation", "RecognizableVisualFeatures",
    "SeriesDescription", "IssuerOfPatientID",
)


def read_policy_header(path: str) -> dict[str, Any]:
    """The attributes :func:`check` (and the subject key) need, read from one file's header.

    A file that cannot be read gives ``{}``: its own error row (from the scan or the
    volume) says why; the policy then decides on the index columns alone. The fast header
    reader answers for plain files (pydicom is not even imported); pydicom for the rest.
    """
    from imaging.dicom.header import fast_attributes

    attrs = fast_attributes(path)
    if attrs is not None:
        return {kw: attrs[kw] for kw in POLICY_KEYWORDS if attrs.get(kw) is not None}
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(POLICY_KEYWORDS), force=True)
    except Exception:  # noqa: BLE001 - a damaged file is reported by the reader, not here
        return {}
    return {kw: ds.get(kw) for kw in POLICY_KEYWORDS if ds.get(kw) is not None}
