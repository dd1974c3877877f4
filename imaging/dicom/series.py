"""Group a series' index rows into volumes, classify it, and plan each volume's grid.

Slice order comes only from ImagePositionPatient projected on the slice normal
(the cross product of the ImageOrientationPatient row and column directions),
never from InstanceNumber or file names. Duplicate positions, missing slices,
uneven spacing and gantry tilt are detected here; the plan says whether the
volume must be resampled (and why) or refused.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast

from imaging.dicom.dims import AXIS_NAMES
from imaging.dicom.geometry import MIN_POSITIONS, Grid, PlanError, Slice, native_runs, plan_grid
from imaging.dicom.index_row import FrameInfo, IndexRow, slice_row
from imaging.dicom.mosaic import MosaicError, mosaic_items
from imaging.dicom.pixel_location import needs_pixel_data
from imaging.dicom.pixels import problem as pixel_problem
from imaging.dicom.split4d import DimensionError, split_dimensions
from imaging.dicom.syntax import is_native, ts_name

SEG_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}
SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
# SOP classes that never hold an image volume (SR, KO, PR, RT, raw data, PDF, waveforms...).
NON_IMAGE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.481.",
    "1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.104.", "1.2.840.10008.5.1.4.1.1.9.",
    "1.2.840.10008.5.1.4.1.1.67", "1.2.840.10008.5.1.4.1.1.68",
)
# The tag (or rule) that orders a volume's 4th axis, for sidecars and remarks.
KEY_TAGS = dict(AXIS_NAMES)
# Two positions make a stack (GE DWI: 2 slices x 7 volumes); a lone slice does not.
MIN_SLICES = MIN_POSITIONS
# Several orientations, each with fewer slices than this: a localizer (tri-plane scout).
LOCALIZER_SLICES = 3
# Instances named in a remark (the rest counted).
MAX_NAMED = 3
# How a reason names a file: absolute path -> its keyed name (``file-<key>``, from imaging.keys).
# Reasons reach the dataset side, and folder names of real exports are patient names: a reason
# is composed with the key, never with the path (nothing is scrubbed afterwards).
FileNamer = Callable[[str], str]


@dataclass
class VolumePlan:
    """One output volume: ``slices[t][k]`` and the grid to write them on."""

    slices: list[list[Slice]]
    grid: Grid
    remarks: list[str] = field(default_factory=list)
    t_key: str | None = None  # the tag that orders the 4th axis, if any

    @property
    def n_instances(self) -> int:
        return len({s.path for ts in self.slices for s in ts})


@dataclass
class SeriesPlan:
    """The fate of one input series: ``kind`` is image, seg, skipped or error."""

    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    sop_class: str
    kind: str
    reason: str = ""
    volumes: list[VolumePlan] = field(default_factory=list)
    n_instances: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[IndexRow] = field(default_factory=list)


@lru_cache(maxsize=64)
def ts_supported(ts: str | None) -> bool:
    """Whether pixel data in transfer syntax ``ts`` can be decoded here."""
    if not ts:
        return False
    if is_native(ts):
        return True
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    try:
        return bool(get_decoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError):
        return False


def plan_series(
    rows: list[IndexRow],
    name_of: FileNamer,
    *,
    tilt: str = "resample",
    uneven: str = "refuse",
    split_4d: bool = False,
    philips_precise: bool = False,
) -> SeriesPlan:
    """Classify a series (all index rows sharing a SeriesInstanceUID) and plan its volumes.

    Args:
        rows: decoded index rows (see :func:`imaging.dicom.scan.decode_row`) of kind ``dicom``.
        name_of: names a file in reasons by key (``FileNames.file_key``), never by path.
        tilt: ``resample`` (onto an orthogonal grid) or ``refuse`` a gantry-tilted stack.
        uneven: ``refuse`` (default: an error row) or ``resample`` (interpolate) uneven or missing slices;
            ``keep``: a stack of varying spacing (planned or with missing slices) becomes one volume per
            run of regular spacing, of its own slices (:func:`imaging.dicom.geometry.native_runs`).
        split_4d: write each timepoint as its own 3D volume instead of one 4D volume.
        philips_precise: Philips "precise" floating-point values (private scale slope (2005,100E),
            as dcm2niix ``-p y``) instead of the displayed RescaleSlope/Intercept values.

    Returns:
        A :class:`SeriesPlan`; problems are reported in ``kind``/``reason``, never raised.
    """
    rows = sorted(rows, key=lambda r: r["path"])
    images = [r for r in rows if not _non_image(r)]
    # Philips exports keep private series data (no pixels) under the image series' UID: such an
    # instance is left out (and named), never read as an image without BitsAllocated.
    left_out = [r for r in rows if _non_image(r)] if images else []
    first = (images or rows)[0]
    plan = SeriesPlan(
        series_uid=first["series_uid"] or "", study_uid=first.get("study_uid") or "",
        patient_id=first.get("patient_id") or "", modality=first.get("modality") or "",
        sop_class=first.get("sop_class") or "", kind="image", n_instances=len(rows),
        params=dict(first.get("params") or {}), rows=rows,
    )
    sop = plan.sop_class
    rel = name_of(first["path"])
    if sop in SEG_CLASSES:
        return _done(plan, "seg", "segmentation (SEG) object: used as ground-truth labels")
    if sop.startswith(SC_PREFIX):
        return _done(plan, "skipped", f"secondary capture: file {rel} (0008,0016) SOPClassUID = '{sop}' ({ts_name(sop)})")
    # pixel_length 0: a complete file of a class without PixelData (pixel_location.needs_pixel_data).
    if sop.startswith(NON_IMAGE_PREFIXES) or not any(r.get("rows") and r.get("pixel_length") != 0 for r in rows):
        name = ts_name(sop)
        return _done(plan, "skipped", f"non-image SOP class: file {rel} (0008,0016) SOPClassUID = '{sop}' ({name})")
    rows = images or rows
    for r in rows:
        raw_type = r.get("image_type") or []
        if "LOCALIZER" in [str(v).upper() for v in raw_type]:
            value = "\\".join(raw_type)
            return _done(plan, "skipped", f"localizer: file {name_of(r['path'])} (0008,0008) ImageType = '{value}'")
    for r in rows:
        problem = _file_problem(r)
        if problem:
            return _done(plan, "error", f"file {name_of(r['path'])}: {problem}")
    problem = _mixed_identity(plan.rows, name_of)
    if problem:
        return _done(plan, "error", problem)
    slices, problem = _expand(rows, name_of, philips_precise=philips_precise)
    if problem:
        return _done(plan, "error", problem)
    _plan_volumes(plan, slices, tilt=tilt, uneven=uneven, split_4d=split_4d)
    if left_out:
        remark = _left_out_remark(left_out, name_of)
        for vol in plan.volumes:
            vol.remarks.append(remark)
    return plan


def _non_image(r: IndexRow) -> bool:
    """An instance that holds no image: a non-image SOP class, or a class that need not hold pixels
    (a vendor's private one: Philips series data) without PixelData. SEGs are never "non-image" here."""
    sop = str(r.get("sop_class") or "")
    if sop in SEG_CLASSES:
        return False
    no_pixels = not r.get("rows") or r.get("pixel_length") == 0
    return sop.startswith(NON_IMAGE_PREFIXES) or (no_pixels and not needs_pixel_data(sop))


def _left_out_remark(rows: list[IndexRow], name_of: FileNamer) -> str:
    named = ", ".join(f"file {name_of(r['path'])} (0008,0016) SOPClassUID = '{r.get('sop_class') or ''}'"
                      for r in rows[:MAX_NAMED])
    more = f" and {len(rows) - MAX_NAMED} more" if len(rows) > MAX_NAMED else ""
    return f"{len(rows)} non-image instance(s) of the series left out (no pixel data): {named}{more}"


def _done(plan: SeriesPlan, kind: str, reason: str) -> SeriesPlan:
    plan.kind, plan.reason = kind, reason
    return plan


def _file_problem(r: IndexRow) -> str | None:
    ts = r.get("ts")
    if not ts_supported(ts):
        return f"unsupported transfer syntax (0002,0010) TransferSyntaxUID = '{ts or ''}'"
    samples = r.get("samples") or 1
    if samples != 1:
        return f"colour image not a volume: (0028,0002) SamplesPerPixel = {samples}"
    return pixel_problem(r)


def _mixed_identity(rows: list[IndexRow], name_of: FileNamer) -> str | None:
    """One series must belong to one patient and one study: anything else is a broken export."""
    for col, tag in (("patient_id", "(0010,0020) PatientID"), ("study_uid", "(0020,000D) StudyInstanceUID")):
        first: dict[str, IndexRow] = {}
        for r in rows:
            first.setdefault(str(r.get(col) or ""), r)
        if len(first) > 1:
            a, b = list(first.values())[:2]
            # Values are identifiers (PHI): name the files, never the values.
            return (f"{len(first)} different {tag} values in one series (e.g. files "
                    f"{name_of(a['path'])} and {name_of(b['path'])})")
    return None


def _expand(rows: list[IndexRow], name_of: FileNamer, *,
            philips_precise: bool = False) -> tuple[list[Slice], str | None]:
    """All frames of all files as :class:`Slice` records, or the first geometry problem."""
    out: list[Slice] = []
    for r in rows:
        frames = r.get("frames")
        if frames is None and (r.get("n_frames") or 1) > 1:
            return [], (f"file {name_of(r['path'])}: multi-frame (0028,0008) NumberOfFrames = {r['n_frames']} "
                        "without (5200,9230) PerFrameFunctionalGroupsSequence geometry")
        items = frames or [{"ipp": r.get("ipp"), "iop": r.get("iop"), "sp": r.get("spacing"),
                            "slope": r.get("slope"), "intercept": r.get("intercept"), "t": r.get("tkey") or {}}]
        if frames is None and "MOSAIC" in [str(v).upper() for v in r.get("image_type") or []]:
            try:  # Siemens mosaic: one slice per tile, positions corrected from the mosaic to the tile
                items = mosaic_items(r, items[0])
            except MosaicError as exc:
                return [], f"{_where(r, 0, None, name_of)}: {exc}"
        for i, f in enumerate(items):
            for key, tag, n in (("iop", "(0020,0037) ImageOrientationPatient", 6),
                                ("ipp", "(0020,0032) ImagePositionPatient", 3),
                                ("sp", "(0028,0030) PixelSpacing", 2)):
                value = f.get(key)
                if value is None:
                    return [], f"{_where(r, i, frames, name_of)}: missing {tag}"
                if not isinstance(value, list) or len(value) != n \
                        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
                    return [], f"{_where(r, i, frames, name_of)}: invalid {tag} = {value!r}"
            # (checked just above: lists of 6, 3 and 2 finite numbers)
            iop, ipp, sp = cast("list[float]", f["iop"]), cast("list[float]", f["ipp"]), cast("list[float]", f["sp"])
            if not _orthonormal(tuple(iop)):
                return [], (f"{_where(r, i, frames, name_of)}: invalid (0020,0037) ImageOrientationPatient = "
                            f"{iop!r} (not orthonormal)")
            if min(sp) <= 0:
                return [], f"{_where(r, i, frames, name_of)}: invalid (0028,0030) PixelSpacing = {sp!r}"
            slope, intercept = _rescale_of(r, f, philips_precise)
            out.append(Slice(
                path=r["path"], frame=i, ipp=(ipp[0], ipp[1], ipp[2]), iop=tuple(iop), spacing=(sp[0], sp[1]),
                t=dict(f.get("t") or {}), slope=slope, intercept=intercept, sop_uid=r.get("sop_uid") or "",
                row=f.get("row") or slice_row(r),
            ))
    return out, None


def _rescale_of(r: IndexRow, f: FrameInfo, philips_precise: bool) -> tuple[float, float]:
    """(slope, intercept) from stored to output values.

    Standard RescaleSlope/Intercept give displayed values. Philips MR without them
    may carry a Real World Value Mapping instead (used then, as dcm2niix does).
    With ``philips_precise`` the private scale slope SS (2005,100E) gives the
    floating-point values P = (stored * RS + RI) / (RS * SS) (Chenevert et al.,
    PMC3998685; dcm2niix ``-p y``).
    """
    slope, intercept = f.get("slope"), f.get("intercept")
    rwvm = r.get("rwvm")
    if slope is None and intercept is None and rwvm and "PHILIPS" in str(
            (r.get("params") or {}).get("Manufacturer", "")).upper():
        slope, intercept = rwvm
    rs = 1.0 if slope is None else float(slope)
    ri = 0.0 if intercept is None else float(intercept)
    ss = f.get("philips_ss") or r.get("philips_ss")  # enhanced: each frame's own (2005,140F) copy
    if philips_precise and ss:
        return 1.0 / float(ss), ri / (rs * float(ss))
    return rs, ri


ORTHONORMAL_TOL = 1e-3


@lru_cache(maxsize=256)
def _orthonormal(iop: tuple[float, ...]) -> bool:
    """Row and column directions of unit length and perpendicular (cached: slices share them).

    Within 1e-3, the tolerance of the SEG/RTSTRUCT writers (imaging.dicom.source_frames.frame_geometry)
    and of highdicom's perpendicularity check: a series ingest accepts must be one the
    writers downstream accept (at 1e-2, a slice 0.004 off passed here and failed its SEG).
    """
    r, c = iop[:3], iop[3:]
    dot = sum(a * b for a, b in zip(r, c, strict=True))
    return abs(math.hypot(*r) - 1) <= ORTHONORMAL_TOL and abs(math.hypot(*c) - 1) <= ORTHONORMAL_TOL \
        and abs(dot) <= ORTHONORMAL_TOL


def _where(r: IndexRow, i: int, frames: Any, name_of: FileNamer) -> str:
    return f"file {name_of(r['path'])}" + (f" frame {i + 1}" if frames else "")


def _geometry_key(s: Slice) -> tuple[Any, ...]:
    """Slices that can share one volume: orientation, image size, PixelSpacing, frame of reference."""
    return (tuple(round(v, 3) for v in s.iop), s.row.get("rows"), s.row.get("cols"),
            tuple(round(v, 4) for v in s.spacing), s.row.get("for_uid") or "")


def _pos_key(s: Slice) -> tuple[float, ...]:
    return tuple(round(v, 2) for v in s.ipp)


def _plan_volumes(plan: SeriesPlan, slices: list[Slice], *, tilt: str, uneven: str, split_4d: bool) -> None:
    groups: dict[tuple[Any, ...], list[Slice]] = defaultdict(list)
    for s in slices:
        groups[_geometry_key(s)].append(s)
    if len(groups) > 1 and all(len(g) < LOCALIZER_SLICES for g in groups.values()):
        _done(plan, "skipped", f"localizer: {len(slices)} slices in {len(groups)} orientations (0020,0037)")
        return
    remarks: list[str] = []
    if len(groups) > 1:
        remarks.append(f"series holds {len(groups)} orientations/image sizes/pixel spacings/frames of reference")
    stacks: list[tuple[list[list[Slice]], str | None, str]] = []
    for key in sorted(groups, key=lambda k: (-len(groups[k]), str(k))):
        group = groups[key]
        if len(group) < MIN_SLICES:
            remarks.append(f"{len(group)} slice(s) with another orientation dropped")
            continue
        try:
            stacks.extend(_split_dimension(group, split_4d, remarks))
        except DimensionError as exc:
            _done(plan, "error", str(exc))
            return
    if not stacks:
        counts = ", ".join(str(len(g)) for g in groups.values())
        _done(plan, "skipped", f"fewer than {MIN_SLICES} slices per stack ({counts})")
        return
    problems = []
    for vol_slices, t_key, label in stacks:
        try:
            # uneven=keep: a stack of varying spacing is one volume per run of regular spacing
            runs = native_runs(vol_slices) if uneven == "keep" else None
            for part, run in runs or [(vol_slices, "")]:
                grid, vol_remarks, ordered = plan_grid(part, tilt=tilt, uneven="refuse" if runs else uneven)
                # The catalog says what the 4th axis is (the sidecar's FourthAxis says it too).
                axis = f"4th axis ({len(ordered)}): {KEY_TAGS[t_key]}" if t_key and len(ordered) > 1 else ""
                plan.volumes.append(VolumePlan(
                    ordered, grid, [*remarks, *filter(None, [label, axis, run]), *vol_remarks], t_key))
        except PlanError as exc:
            problems.append(f"{label}: {exc}" if label else str(exc))
    if problems and not plan.volumes:
        _done(plan, "error", "; ".join(problems))
    elif problems:
        plan.reason = "; ".join(problems)


def _split_dimension(
    group: list[Slice], split_4d: bool, remarks: list[str]
) -> list[tuple[list[list[Slice]], str | None, str]]:
    """Split slices sharing positions by their real dimensions (see :mod:`imaging.dicom.split4d`)."""
    keys = {id(s): _pos_key(s) for s in group}  # rounded once: the split asks for each slice's many times
    if len(set(keys.values())) == len(group):
        return [([group], None, "")]
    parts = split_dimensions(group, lambda s: keys[id(s)])
    if parts is None:  # positions repeat and nothing tells the copies apart: volume.py compares pixels
        return [([group], None, "")]
    out: list[tuple[list[list[Slice]], str | None, str]] = []
    for stacks, axis, label in parts:
        if axis and len(stacks) > 1 and split_4d:
            remarks.append(f"4D split by {KEY_TAGS[axis]} into {len(stacks)} volumes")
            out.extend(([st], None, label) for st in stacks)
        else:
            out.append((stacks, axis if len(stacks) > 1 else None, label))
    return out
