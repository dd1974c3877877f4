"""Quality checks around inference: geometry before (skip with a reason), plausibility after (flags).

Before: a series that matches the rule can still be unfit for the model::

    qc:
      max_tilt_deg: 0          # gantry tilt above this is refused (null: any tilt)
      uneven_spacing: refuse   # refuse | allow (slices not evenly spaced)
      min_slices: 16           # fewer slices than this is refused
      lossless_only: true      # the model was trained on lossless data: lossy-compressed series refused

After: flags on the prediction of a selected series (the statistics of a flagged
series are not to be trusted as they are)::

    flags:
      empty_mask: true         # flag labels the model did not find at all
      border: true             # flag labels touching the volume border: volume incomplete
      volume_ml: {liver: [600, 4000]}   # flag volumes outside the plausible range
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from imaging.errors import closest
from imaging.selection.features import SeriesFeatures

QC_KEYS = ("max_tilt_deg", "uneven_spacing", "min_slices", "lossless_only")
FLAG_KEYS = ("empty_mask", "border", "volume_ml")


def _err(msg: str, hint: str | None = None) -> Exception:
    from imaging.selection.rules import RuleError

    return RuleError(msg, hint)


def _number(value: Any, key: str, minimum: float = 0.0) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise _err(f"{key}: expected a number, got {value!r}") from None
    if out < minimum:
        raise _err(f"{key}: {value} must be >= {minimum:g}")
    return out


def parse_qc(obj: Mapping[str, Any] | None, key: str = "select.qc") -> dict[str, Any]:
    """Validate the ``qc`` block (missing: no checks).

    Raises:
        RuleError: unknown key or bad value (names the key).
    """
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise _err(f"{key}: expected a mapping, got {obj!r}")
    out: dict[str, Any] = {}
    for k, v in obj.items():
        where = f"{key}.{k}"
        if k not in QC_KEYS:
            raise _err(f"{where}: unknown key", closest(str(k), QC_KEYS))
        if v is None:
            continue
        if k == "max_tilt_deg":
            out[k] = _number(v, where)
        elif k == "min_slices":
            out[k] = int(_number(v, where, 1))
        elif k == "uneven_spacing":
            if v not in ("refuse", "allow"):
                raise _err(f"{where}: '{v}' is not one of ['refuse', 'allow']")
            out[k] = v
        elif k == "lossless_only":
            if not isinstance(v, bool):
                raise _err(f"{where}: expected true or false, got {v!r}")
            out[k] = v
    return out


def parse_flags(obj: Mapping[str, Any] | None, key: str = "select.flags") -> dict[str, Any]:
    """Validate the ``flags`` block (missing: empty-mask and border flags on, no volume ranges).

    Raises:
        RuleError: unknown key or bad value (names the key).
    """
    out: dict[str, Any] = {"empty_mask": True, "border": True, "volume_ml": {}}
    if obj is None:
        return out
    if not isinstance(obj, Mapping):
        raise _err(f"{key}: expected a mapping, got {obj!r}")
    for k, v in obj.items():
        where = f"{key}.{k}"
        if k not in FLAG_KEYS:
            raise _err(f"{where}: unknown key", closest(str(k), FLAG_KEYS))
        if k in ("empty_mask", "border"):
            if not isinstance(v, bool):
                raise _err(f"{where}: expected true or false, got {v!r}")
            out[k] = v
        elif v is not None:
            if not isinstance(v, Mapping):
                raise _err(f"{where}: expected {{label: [min_ml, max_ml]}}, got {v!r}")
            ranges = {}
            for name, rng in v.items():
                if not isinstance(rng, (list, tuple)) or len(rng) != 2:
                    raise _err(f"{where}.{name}: expected [min_ml, max_ml] (null for open), got {rng!r}")
                lo = 0.0 if rng[0] is None else _number(rng[0], f"{where}.{name}")
                hi = math.inf if rng[1] is None else _number(rng[1], f"{where}.{name}")
                if lo > hi:
                    raise _err(f"{where}.{name}: min {lo:g} > max {hi:g}")
                ranges[str(name)] = (lo, hi)
            out[k] = ranges
    return out


def qc_failures(f: SeriesFeatures, qc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(check name, reason) for every geometry check a selected-to-be series fails."""
    out: list[tuple[str, str]] = []
    if "max_tilt_deg" in qc and abs(f.tilt_deg) > qc["max_tilt_deg"] + 1e-6:
        out.append(("qc.max_tilt_deg", f"gantry tilt {f.tilt_deg:g} deg > {qc['max_tilt_deg']:g}"))
    if qc.get("uneven_spacing") == "refuse" and f.uneven:
        out.append(("qc.uneven_spacing", "slices are not evenly spaced"))
    if "min_slices" in qc and (f.n_slices or 0) < qc["min_slices"]:
        out.append(("qc.min_slices", f"{f.n_slices or 0} slices < {qc['min_slices']}"))
    if qc.get("lossless_only") and f.lossy is not False:
        out.append(("qc.lossless_only", "lossy compression" if f.lossy else "compression unknown"))
    return out


def output_flags(labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str],
                 flags: Mapping[str, Any]) -> list[str]:
    """Plausibility flags of one prediction (label map on the source NIfTI grid).

    ``names``: label value -> name of the labels that were written (0 excluded).
    """
    out: list[str] = []
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(names, default=0) + 1)
    present = {v: n for v, n in names.items() if v != 0 and v < len(counts) and counts[v] > 0}
    if flags.get("empty_mask", True):
        if not present:
            out.append("empty mask")
        else:
            out += [f"empty: {n}" for v, n in sorted(names.items()) if v != 0 and v not in present]
    for name, (lo, hi) in sorted((flags.get("volume_ml") or {}).items()):
        value = next((float(counts[v]) * voxel_ml for v, n in present.items() if n == name), None)
        if value is not None and not lo <= value <= hi:  # absent labels: flagged as empty above
            out.append(f"volume {name} {value:.1f} mL outside [{lo:g}, {hi:g}]")
    if flags.get("border", True) and present:
        edge = np.zeros(labels.shape[:3], dtype=bool)
        for axis in range(3):
            idx: list[Any] = [slice(None)] * 3
            for end in (0, labels.shape[axis] - 1):
                idx[axis] = end
                edge[tuple(idx)] = True
        on_edge = set(np.unique(labels[edge]).tolist())
        touching = sorted(n for v, n in present.items() if v in on_edge)
        if touching:
            out.append(f"touches border: {', '.join(touching)} (statistics incomplete)")
    return out
