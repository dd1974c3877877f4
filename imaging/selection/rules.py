"""Series selection rules: which series of a study a model runs on (parsed, validated, evaluated).

A rule (``imaging/conf/inference/select/*.yaml``, stored with the registered model) is::

    name: ct_axial_soft
    per_study: one                      # one: the best match per study | all: every match
    tie_break: [most_slices, thinnest, latest]
    match:                              # a group: {all: [...]} (AND) or {any: [...]} (OR)
      all:
        - {name: ct, modality: CT}
        - {name: axial, orientation: axial, tolerance_deg: 10}
        - {name: thin, slice_thickness: [null, 3.0]}
        - any:                          # groups nest
            - {name: soft_kernel, kernel: "^(B3\\d|STANDARD|SOFT)"}
            - {name: pv_description, description: "(?i)portal|pv"}
    qc: {...}                           # see imaging.selection.qc

Every leaf has a ``name`` (the report says which named condition rejected a
series) and one or more criteria, all of which must hold. The series
description regex is evaluated on the hospital side only; reasons never echo the
description itself.

Raises :class:`RuleError` (a :class:`~imaging.errors.UsageError`: exit 2) naming
the key, e.g. ``select.match.all[2].slice_thicknes: unknown key (did you mean
'slice_thickness'?)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imaging.errors import UsageError, closest
from imaging.selection.features import SeriesFeatures

PER_STUDY = ("one", "all")
TIE_BREAKS = ("most_slices", "thinnest", "latest", "lowest_series_number")
ORIENTATIONS = ("axial", "coronal", "sagittal")
# Leaf criteria and what their value is.
RANGE_KEYS = ("slice_thickness", "slice_spacing", "pixel_spacing", "n_slices")
LIST_KEYS = ("modality", "body_part", "image_type", "image_type_not")
REGEX_KEYS = ("description", "kernel")
OTHER_KEYS = ("name", "orientation", "tolerance_deg", "contrast")
LEAF_KEYS = (*RANGE_KEYS, *LIST_KEYS, *REGEX_KEYS, *OTHER_KEYS)
RULE_KEYS = ("name", "per_study", "tie_break", "match", "qc", "flags", "use_model_rule")


class RuleError(UsageError):
    """A selection rule is malformed: the message starts with the key."""


def _strs(value: Any, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, (str, int, float)) else value
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        raise RuleError(f"{key}: expected a string or a non-empty list of strings, got {value!r}")
    return tuple(str(v) for v in items)


def _range(value: Any, key: str) -> tuple[float, float]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise RuleError(f"{key}: expected [min, max] (null for open), got {value!r}")
    try:
        lo = -math.inf if value[0] is None else float(value[0])
        hi = math.inf if value[1] is None else float(value[1])
    except (TypeError, ValueError):
        raise RuleError(f"{key}: bounds must be numbers or null, got {value!r}") from None
    if lo > hi:
        raise RuleError(f"{key}: min {lo} > max {hi}")
    return lo, hi


@dataclass(frozen=True)
class Leaf:
    """A named condition: every criterion it carries must hold."""

    name: str
    criteria: dict[str, Any]

    def failures(self, f: SeriesFeatures) -> list[str]:
        """Why ``f`` fails this condition (empty: it holds). Never echoes the description."""
        why: list[str] = []
        c = self.criteria
        for key in ("modality", "body_part"):
            if key in c:
                have = str(getattr(f, key) or "").upper()
                if have not in {v.upper() for v in c[key]}:
                    why.append(f"{key} {have or 'unknown'} not in {list(c[key])}")
        types = {t.upper() for t in f.image_type}
        if "image_type" in c and not {v.upper() for v in c["image_type"]} <= types:
            why.append(f"image_type {sorted(types)} lacks {list(c['image_type'])}")
        if "image_type_not" in c and types & {v.upper() for v in c["image_type_not"]}:
            why.append(f"image_type has {sorted(types & {v.upper() for v in c['image_type_not']})}")
        if "orientation" in c:
            plane, angle = f.plane, f.obliquity_deg
            if plane != c["orientation"] or angle is None or angle > c.get("tolerance_deg", 10.0):
                why.append(f"orientation {plane or 'unknown'} ({'?' if angle is None else f'{angle:.1f}'} deg "
                           f"off) is not {c['orientation']} within {c.get('tolerance_deg', 10.0)} deg")
        for key in RANGE_KEYS:
            if key in c:
                value = getattr(f, key)
                lo, hi = c[key]
                if value is None or not lo <= float(value) <= hi:
                    why.append(f"{key} {'unknown' if value is None else f'{float(value):g}'} not in "
                               f"[{lo:g}, {hi:g}]")
        if "contrast" in c and f.contrast is not bool(c["contrast"]):
            why.append(f"contrast {'unknown' if f.contrast is None else f.contrast} is not {bool(c['contrast'])}")
        if "kernel" in c and (f.kernel is None or not c["kernel"].search(f.kernel)):
            why.append(f"kernel {f.kernel or 'unknown'} does not match /{c['kernel'].pattern}/")
        if "description" in c and (f.description is None or not c["description"].search(f.description)):
            # The description may hold PHI: say only that it did not match.
            why.append("series description unknown" if f.description is None
                       else "series description does not match")
        return why


@dataclass(frozen=True)
class Group:
    """``all`` (AND) or ``any`` (OR) of leaves and groups."""

    op: str
    items: tuple[Leaf | Group, ...]
    name: str = ""

    def failures(self, f: SeriesFeatures) -> list[tuple[str, str]]:
        """(condition name, reason) for every failed condition that makes the group fail."""
        results = [_failures(item, f) for item in self.items]
        if self.op == "all":
            return [x for r in results for x in r]
        if any(not r for r in results):
            return []
        label = self.name or "any(" + ",".join(_name(i) for i in self.items) + ")"
        return [(label, "; ".join(f"{n}: {w}" for r in results for n, w in r))]


def _name(item: Leaf | Group) -> str:
    return item.name or (item.op if isinstance(item, Group) else "")


def _failures(item: Leaf | Group, f: SeriesFeatures) -> list[tuple[str, str]]:
    if isinstance(item, Leaf):
        why = item.failures(f)
        return [(item.name, "; ".join(why))] if why else []
    return item.failures(f)


@dataclass(frozen=True)
class Rule:
    """A validated selection rule (see the module docstring)."""

    name: str
    match: Group
    per_study: str = "one"
    tie_break: tuple[str, ...] = ("most_slices", "thinnest", "latest")
    qc: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # the plain dict (stored with the model)

    def rejections(self, f: SeriesFeatures) -> list[tuple[str, str]]:
        """(condition name, reason) pairs; empty when the series matches."""
        return self.match.failures(f)

    def rank_key(self, f: SeriesFeatures) -> tuple[Any, ...]:
        """Sort key: the first series in ascending order wins the tie-break."""
        key: list[Any] = []
        for tb in self.tie_break:
            if tb == "most_slices":
                key.append(-(f.n_slices or 0))
            elif tb == "thinnest":
                key.append(f.slice_thickness if f.slice_thickness is not None else math.inf)
            elif tb == "latest":
                key.append("".join(reversed_digits(f.acquired or "")))
            elif tb == "lowest_series_number":
                key.append(f.series_number if f.series_number is not None else math.inf)
        return (*key, f.series_key)


def reversed_digits(stamp: str) -> str:
    """Sort a date-time stamp descending with an ascending sort: 9-complement of its digits."""
    return "".join(str(9 - int(ch)) if ch.isdigit() else ch for ch in stamp) + "~"


def _parse_item(obj: Any, key: str) -> Leaf | Group:
    if not isinstance(obj, Mapping):
        raise RuleError(f"{key}: expected a mapping (a condition or an all/any group), got {obj!r}")
    ops = [op for op in ("all", "any") if op in obj]
    if ops:
        if len(ops) > 1 or set(obj) - {"all", "any", "name"}:
            extra = sorted(set(obj) - {"name", ops[0]})
            raise RuleError(f"{key}: a group has one of all/any and an optional name; also got {extra}")
        op = ops[0]
        items = obj[op]
        if not isinstance(items, Sequence) or isinstance(items, str) or not items:
            raise RuleError(f"{key}.{op}: expected a non-empty list of conditions")
        parsed = tuple(_parse_item(it, f"{key}.{op}[{i}]") for i, it in enumerate(items))
        return Group(op, parsed, str(obj.get("name") or ""))
    return _parse_leaf(obj, key)


def _parse_leaf(obj: Mapping[str, Any], key: str) -> Leaf:
    for k in obj:
        if k not in LEAF_KEYS:
            raise RuleError(f"{key}.{k}: unknown key", closest(str(k), LEAF_KEYS))
    if not obj.get("name"):
        raise RuleError(f"{key}.name: every condition needs a name (the report cites it)")
    crit: dict[str, Any] = {}
    for k, v in obj.items():
        where = f"{key}.{k}"
        if k in RANGE_KEYS:
            crit[k] = _range(v, where)
        elif k in LIST_KEYS:
            crit[k] = _strs(v, where)
        elif k in REGEX_KEYS:
            try:
                crit[k] = re.compile(str(v), 0 if k == "description" else re.IGNORECASE)
            except re.error as exc:
                raise RuleError(f"{where}: invalid regular expression ({exc})") from None
        elif k == "orientation":
            if str(v).lower() not in ORIENTATIONS:
                raise RuleError(f"{where}: '{v}' is not one of {list(ORIENTATIONS)}", closest(str(v), ORIENTATIONS))
            crit[k] = str(v).lower()
        elif k == "tolerance_deg":
            try:
                crit[k] = float(v)
            except (TypeError, ValueError):
                raise RuleError(f"{where}: expected degrees, got {v!r}") from None
            if not 0 <= crit[k] < 90:
                raise RuleError(f"{where}: {v} must be in [0, 90)")
        elif k == "contrast":
            if not isinstance(v, bool):
                raise RuleError(f"{where}: expected true or false, got {v!r}")
            crit[k] = v
    if "tolerance_deg" in crit and "orientation" not in crit:
        raise RuleError(f"{key}.tolerance_deg: only meaningful with orientation")
    if not set(crit) - {"tolerance_deg"}:
        raise RuleError(f"{key}: condition '{obj['name']}' has no criterion (keys: {list(LEAF_KEYS)})")
    return Leaf(str(obj["name"]), crit)


def parse_rule(obj: Mapping[str, Any] | None, key: str = "select") -> Rule:
    """Validate a rule dict (from Hydra or a model bundle).

    Raises:
        RuleError: unknown key, bad value, bad regex, missing name; the message names the key.
    """
    from imaging.selection.qc import parse_flags, parse_qc

    if not isinstance(obj, Mapping):
        raise RuleError(f"{key}: expected a mapping, got {obj!r}")
    for k in obj:
        if k not in RULE_KEYS:
            raise RuleError(f"{key}.{k}: unknown key", closest(str(k), RULE_KEYS))
    if "match" not in obj or obj["match"] is None:
        raise RuleError(f"{key}.match: missing (an all/any group of named conditions)")
    match = _parse_item(obj["match"], f"{key}.match")
    if isinstance(match, Leaf):
        match = Group("all", (match,))
    per_study = str(obj.get("per_study") or "one")
    if per_study not in PER_STUDY:
        raise RuleError(f"{key}.per_study: '{per_study}' is not one of {list(PER_STUDY)}")
    tie = _strs(obj.get("tie_break") or ["most_slices", "thinnest", "latest"], f"{key}.tie_break")
    for i, t in enumerate(tie):
        if t not in TIE_BREAKS:
            raise RuleError(f"{key}.tie_break[{i}]: '{t}' is not one of {list(TIE_BREAKS)}", closest(t, TIE_BREAKS))
    plain = {k: v for k, v in obj.items() if k != "use_model_rule"}
    return Rule(str(obj.get("name") or "unnamed"), match, per_study, tie,
                parse_qc(obj.get("qc"), f"{key}.qc"), parse_flags(obj.get("flags"), f"{key}.flags"), plain)
