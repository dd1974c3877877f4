"""Options of `imaging deid`: which PS3.15 options are on, the safe-private list, counters.

Built from the ``deid.options`` config block (``deid_options``) by :meth:`DeidOptions.from_mapping`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imaging.deid.profile import Option
from imaging.deid.values import DEFAULT_SAFE_WORDS
from imaging.deid.withhold import WithholdPolicy


@dataclass(frozen=True)
class SafePrivate:
    """One private element kept by the Retain Safe Private option.

    Attributes:
        group: the odd group, e.g. ``0x0043``.
        creator: the Private Creator value that reserves the block.
        element: the element's low byte within the block (``0x27`` for ``(0043,xx27)``).
    """

    group: int
    creator: str
    element: int

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> SafePrivate:
        """Build from ``{group: "0043", creator: "GEMS_PARM_01", element: "27"}`` (hex strings or ints).

        Raises:
            ValueError: a key is missing, the group is even, or the element is out of 0x00-0xFF.
        """
        try:
            group = spec["group"] if isinstance(spec["group"], int) else int(str(spec["group"]), 16)
            elem = (
                spec["element"]
                if isinstance(spec["element"], int)
                else int(str(spec["element"]), 16)
            )
            creator = str(spec["creator"])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"deid.safe_private entry {dict(spec)!r}: {exc}") from exc
        if group % 2 == 0 or not 0 <= elem <= 0xFF:
            raise ValueError(
                f"deid.safe_private entry {dict(spec)!r}: group must be odd, element 00-FF"
            )
        return cls(group, creator.strip(), elem)


@dataclass(frozen=True)
class DeidOptions:
    """Which PS3.15 options are in force (defaults: what research exports need).

    ``overrides`` maps a keyword to an action (``X Z D K C U``) that replaces the
    table's for hospitals that must be stricter than the profile. ``withhold`` is
    the burned-in text policy (:mod:`imaging.deid.withhold`; ``allow_ultrasound``
    releases US too). Ages of 90 and over become ``090Y`` (HIPAA safe harbour; the
    count of people that old makes the exact age identifying) unless
    ``keep_age_90_plus``.
    """

    retain_longitudinal_modified_dates: bool = True
    retain_longitudinal_full_dates: bool = False
    retain_patient_characteristics: bool = True
    clean_descriptors: bool = True
    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    safe_private: tuple[SafePrivate, ...] = ()
    allow_ultrasound: bool = False
    safe_words: frozenset[str] = DEFAULT_SAFE_WORDS
    subject_prefix: str = "SUBJ"
    overrides: tuple[tuple[str, str], ...] = ()
    withhold: WithholdPolicy = WithholdPolicy()
    keep_age_90_plus: bool = False

    def __post_init__(self) -> None:
        if self.retain_longitudinal_full_dates and self.retain_longitudinal_modified_dates:
            raise ValueError(
                "deid options: retain_longitudinal_full_dates and retain_longitudinal_modified_dates "
                "exclude each other"
            )
        for keyword, action in self.overrides:
            if action not in {"X", "Z", "D", "K", "C", "U"}:
                raise ValueError(
                    f"deid.overrides.{keyword}: action '{action}' is not one of X Z D K C U"
                )

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> DeidOptions:
        """Options from the ``deid_options`` config mapping.

        Raises:
            ValueError: an unknown key, or an invalid safe-private entry or override.
        """
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(cfg) - known - {"extra_safe_words"}
        if unknown:
            raise ValueError(
                f"deid options: unknown key(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        kwargs = {k: v for k, v in cfg.items() if k in known}
        kwargs["safe_private"] = tuple(SafePrivate.parse(s) for s in cfg.get("safe_private") or ())
        words = set(DEFAULT_SAFE_WORDS) | {
            str(w).lower() for w in cfg.get("extra_safe_words") or ()
        }
        kwargs["safe_words"] = frozenset(words)
        kwargs["overrides"] = tuple(
            (str(k), str(v)) for k, v in dict(cfg.get("overrides") or {}).items()
        )
        kwargs["withhold"] = WithholdPolicy.from_mapping(
            cfg.get("withhold"), allow_ultrasound=bool(cfg.get("allow_ultrasound"))
        )
        return cls(**kwargs)

    def policy(self) -> WithholdPolicy:
        """The withholding policy with ``allow_ultrasound`` folded in."""
        if self.allow_ultrasound and "US" not in self.withhold.allow_modalities:
            return WithholdPolicy(self.withhold.allow_rules, self.withhold.allow_modalities | {"US"})
        return self.withhold

    def enabled(self) -> frozenset[Option]:
        """The table options this configuration turns on."""
        on = {
            Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: self.retain_longitudinal_modified_dates,
            Option.RETAIN_LONGITUDINAL_FULL_DATES: self.retain_longitudinal_full_dates,
            Option.RETAIN_PATIENT_CHARACTERISTICS: self.retain_patient_characteristics,
            Option.CLEAN_DESCRIPTORS: self.clean_descriptors,
            Option.RETAIN_UIDS: self.retain_uids,
            Option.RETAIN_DEVICE_IDENTITY: self.retain_device_identity,
            Option.RETAIN_INSTITUTION_IDENTITY: self.retain_institution_identity,
            Option.RETAIN_SAFE_PRIVATE: bool(self.safe_private),
        }
        return frozenset(opt for opt, flag in on.items() if flag)


@dataclass
class DeidStats:
    """Counts per attribute keyword and outcome (never values), plus withheld reasons."""

    actions: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    withheld: Counter[str] = field(default_factory=Counter)
    last_reason: str | None = None

    def count(self, keyword: str, outcome: str) -> None:
        self.actions[keyword][outcome] += 1

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {k: dict(sorted(v.items())) for k, v in sorted(self.actions.items())}
