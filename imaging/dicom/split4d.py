"""Split a same-geometry group of slices whose positions repeat into volumes, by their real dimensions.

Each slice carries its dimension record (:mod:`imaging.dicom.dims`). :func:`split_dimensions`

1. separates image components, echoes, ASL label/control and SeriesNumbers into separate volumes;
2. finds the keys that are constant over a whole volume (each value covers every
   slice position): diffusion (b, direction), temporal position, trigger time,
   acquisition number;
3. as a last resort numbers the repeats of each position in acquisition order
   (AcquisitionNumber, AcquisitionTime, InstanceNumber), e.g. GE fMRI without
   TemporalPositionIdentifier, when every position repeats the same number of times.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imaging.dicom.dims import VOLUME_KEYS

if TYPE_CHECKING:
    from imaging.dicom.geometry import Slice


class DimensionError(ValueError):
    """Repeated positions that look like a 4D series but do not form complete volumes."""


def _norm(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 3)
    if isinstance(v, list):
        return tuple(round(x, 4) if isinstance(x, float) else x for x in v)
    return v


def _value(s: Slice, key: str) -> Any:
    t = s.t
    if key == "diff":
        if "b" not in t and "bvec" not in t and "bvec_ge" not in t:
            return None
        return (_norm(t.get("b")), _norm(t.get("bvec") or t.get("bvec_ge")))
    return _norm(t.get(key))


def _separate_key(s: Slice) -> tuple[Any, ...]:
    """(image component, echo, ASL label/control, SeriesNumber): each value its own volume.

    Without a known component, the ImageType values after ORIGINAL/PRIMARY stand in for it
    (e.g. a Philips B0 map beside its magnitude images). One SeriesInstanceUID under several
    SeriesNumbers is several exports of an acquisition (a re-encoded copy, a re-send): each
    number is a volume of its own, as dcm2niix writes it, never repeats to drop or a time axis.
    """
    t = s.t
    echo = t.get("echo") if t.get("echo") is not None else t.get("te")
    comp = t.get("comp") or "\\".join(str(v).upper() for v in (s.row.get("image_type") or [])[2:])
    number = (s.row.get("params") or {}).get("SeriesNumber")
    return (comp, _norm(echo), t.get("asl") or "", _norm(number) if number is not None else "")


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else 0.0


def _order(s: Slice) -> tuple[Any, ...]:
    t = s.t
    return (t.get("acq") if isinstance(t.get("acq"), (int, float)) else 0,
            t.get("atime") if t.get("atime") is not None else 0.0,
            t.get("inst") if t.get("inst") is not None else (s.row.get("instance_number") or 0), s.path, s.frame)


def split_dimensions(
    group: list[Slice], pos_key: Callable[[Slice], Any]
) -> list[tuple[list[list[Slice]], str | None, str]] | None:
    """Volumes of a same-geometry group whose positions repeat, or ``None`` when nothing separates them.

    Returns:
        ``[(stacks, axis key or None, label)]``: one entry per output volume, ``stacks[t]``
        the slices of timepoint t; ``label`` names the component/echo for the catalog.

    Raises:
        DimensionError: every position repeats, but not equally often (an incomplete 4D series).
    """
    separate: dict[tuple[Any, ...], list[Slice]] = defaultdict(list)
    for s in group:
        separate[_separate_key(s)].append(s)
    varying = [i for i in range(4) if len({k[i] for k in separate}) > 1]
    out: list[tuple[list[list[Slice]], str | None, str]] = []
    for key in sorted(separate, key=lambda k: (_num(k[3]), str(k[3]), str(k[0]), _num(k[1]), k[2])):
        part = separate[key]
        label = ", ".join(filter(None, [
            f"(0020,0011) SeriesNumber {key[3] if key[3] != '' else 'absent'}" if 3 in varying else "",
            f"component {key[0] or 'none'}" if 0 in varying else "", f"echo {key[1]}" if 1 in varying else "",
            f"ASL {key[2].lower()}" if 2 in varying else ""]))
        positions = {pos_key(s) for s in part}
        if len(positions) == len({(s.sop_uid or id(s), s.frame) for s in part}):
            out.append(([part], None, label))
            continue
        volumes = _volumes(part, pos_key, positions)
        if volumes is None:
            if len(separate) == 1:
                return None
            out.append(([part], None, label))  # volume.py reports the duplicate positions
            continue
        stacks, axis = volumes
        out.append((stacks, axis, label))
    return out


def _volumes(part: list[Slice], pos_key: Callable[[Slice], Any],
             positions: set[Any]) -> tuple[list[list[Slice]], str] | None:
    """Split one component/echo into volumes covering every position, in acquisition order."""
    originals: dict[tuple[Any, int], Slice] = {}
    copies: list[Slice] = []
    for s in part:  # the same SOP instance twice: a copy, kept beside its original (geometry drops it)
        k = (s.sop_uid, s.frame)
        if s.sop_uid and k in originals:
            copies.append(s)
        else:
            originals[k] = s
    uniq = list(originals.values())
    identity: list[str] = []
    for key in VOLUME_KEYS:
        values: dict[Any, set[Any]] = defaultdict(set)
        for s in uniq:
            values[_value(s, key)].add(pos_key(s))
        if len(values) > 1 and all(p == positions for p in values.values()):
            identity.append(key)
    groups: dict[tuple[Any, ...], list[Slice]] = defaultdict(list)
    for s in uniq:
        groups[tuple(_value(s, k) for k in identity)].append(s)
    axis = identity[0] if identity else "order"
    if any(len({pos_key(s) for s in g}) != len(g) for g in groups.values()):
        # Repeats left: number them in acquisition order, if every position repeats equally.
        ordered: dict[tuple[Any, ...], list[Slice]] = defaultdict(list)
        for ident, g in groups.items():
            by_pos: dict[Any, list[Slice]] = defaultdict(list)
            for s in g:
                by_pos[pos_key(s)].append(s)
            counts = Counter(len(v) for v in by_pos.values())
            if len(counts) != 1 or set(by_pos) != positions:
                if set(by_pos) == positions and min(counts) >= 2:
                    raise DimensionError(
                        f"incomplete 4D series: each of {len(positions)} slice positions (0020,0032) should repeat "
                        f"equally, but they repeat {min(counts)} to {max(counts)} times and no temporal, diffusion "
                        "or acquisition tag completes the volumes")
                return None
            for items in by_pos.values():
                for n, s in enumerate(sorted(items, key=_order)):
                    ordered[(*ident, n)].append(s)
        groups = ordered
        if not identity:
            axis = "order"
    if any({pos_key(s) for s in g} != positions for g in groups.values()):
        return None
    numeric = axis in ("tpi", "trig", "acq", "stack")
    vols = [groups[k] for k in sorted(groups, key=lambda k: (
        tuple(v if isinstance(v, (int, float)) else 0 for v in k) if numeric else (), min(_order(s) for s in groups[k])))]
    index = {(s.sop_uid, s.frame): i for i, g in enumerate(vols) for s in g}
    for s in copies:
        vols[index[(s.sop_uid, s.frame)]].append(s)
    return vols, axis
