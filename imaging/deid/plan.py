"""The action for each tag under a set of options: PS3.15 Table E.1-1 resolved once per options object."""

from __future__ import annotations

from functools import lru_cache

from pydicom.datadict import tag_for_keyword

from imaging.deid.options import DeidOptions
from imaging.deid.profile import MASKED_ROWS, ROWS, Option, resolve_action

# Options we implement; Clean Structured Content / Clean Graphics would need SR and
# graphic-annotation rewriting, so those rows fall back to their basic action.
SUPPORTED_OPTIONS = frozenset(Option) - {Option.CLEAN_STRUCTURED_CONTENT, Option.CLEAN_GRAPHICS}


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


def masked_action(tag: int, options: DeidOptions) -> tuple[str, str] | None:
    """(name, action) of a repeating-group tag of Table E.1-1 (curves 50xx, overlays 60xx), or None."""
    group, elem = tag >> 16, tag & 0xFFFF
    for g, e, basic, opts in MASKED_ROWS:
        if group >> 8 == int(g[:2], 16) and (e == "XXXX" or elem == int(e, 16)):
            name = {"50": "CurveData", "60": "Overlay" + ("Data" if e == "3000" else "Comments")}[
                g[:2]
            ]
            return name, resolve_action(basic, opts, options.enabled() & SUPPORTED_OPTIONS)
    return None
