"""Typed settings of de-identification: the shared ``deid_options`` group and ``imaging deid``'s own keys.

``deid_options`` is one group in three commands (deid, ingest, infer's SEG header), so it is
checked wherever it is composed. Withholding rule names are those of
:data:`imaging.deid.withhold.RULES` (copied: settings sit below deid and import nothing of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imaging.settings.check import setting

WITHHOLD_RULES = ("burned-in-annotation", "recognizable-features", "secondary-capture", "screen-save",
                  "dose-report", "risky-modality")


@dataclass
class WithholdSettings:
    allow_rules: list[str] = setting(None, each_choices=WITHHOLD_RULES)
    allow_modalities: list[str] = setting(None)


@dataclass
class DeidOptionsSettings:
    """``deid_options.*``: PS3.15 Table E.1-1 options and the withholding policy."""

    retain_longitudinal_modified_dates: bool = setting(True)
    retain_longitudinal_full_dates: bool = setting(False)
    retain_patient_characteristics: bool = setting(True)
    clean_descriptors: bool = setting(True)
    retain_uids: bool = setting(False)
    retain_device_identity: bool = setting(False)
    retain_institution_identity: bool = setting(False)
    safe_private: list[Any] = setting(None)
    extra_safe_words: list[str] = setting(None)
    overrides: dict[str, Any] = setting(None)
    keep_age_90_plus: bool = setting(False)
    withhold: WithholdSettings = field(default_factory=WithholdSettings)


@dataclass
class DeidCommand:
    """The top-level keys of ``imaging deid`` (``input_dir``/``output_dir``: checked by the app as paths)."""

    input_dir: str = setting("")
    output_dir: str = setting("")
    progress: bool = setting(True)
    secret_file: str | None = setting(None)
    demo_key: bool = setting(False)
    link_table: str | None = setting(None)
    allow_ultrasound: bool = setting(False)
