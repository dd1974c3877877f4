"""Tricky cases: the series that break naive DICOM readers, each flagged in the manifest.

Cases live on extra subjects after the normal ones: the ``ct`` group shares one
subject's CT study, the ``mr`` group one subject's MR study, and each patient
position gets a subject of its own (a position is a property of an exam). Every
case writes at least one series whose manifest entry carries the case's flags and
the outcome ingest is expected to report (``expected``; reasons follow
``imaging.dicom.series``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from imaging.synth import phantom as ph
from imaging.synth.export import (
    SIZES,
    Export,
    Subject,
    expected_ok,
    grid_for,
    new_info,
    record_series,
    series_rng,
    volume_series,
    write_labels,
)
from imaging.synth.geometry import Grid, rotation
from imaging.synth.objects import (
    BASIC_TEXT_SR,
    ENHANCED_MR,
    SECONDARY_CAPTURE,
    UNKNOWN_TS,
    scramble_unknown_ts,
    write_basic_text_sr,
    write_enhanced_mr,
    write_secondary_capture,
)
from imaging.synth.writer import SliceOptions, write_slices

CaseFn = Callable[[Export, Subject], None]


@dataclass(frozen=True)
class Case:
    """A named tricky case: ``group`` picks the subject it is written on."""

    name: str
    group: str
    fn: CaseFn


CASES: dict[str, Case] = {}
POSITIONS = ("FFS", "HFP", "FFP", "HFDL", "HFDR")


def _case(name: str, group: str) -> Callable[[CaseFn], CaseFn]:
    def register(fn: CaseFn) -> CaseFn:
        CASES[name] = Case(name, group, fn)
        return fn

    return register


def _skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason_contains": reason, "n_volumes": 0, "shape": None, "timepoints": None}


def _error(reason: str) -> dict[str, Any]:
    return {"status": "error", "reason_contains": reason, "n_volumes": 0, "shape": None, "timepoints": None}


def _grid(export: Export, subject: Subject, **kw: Any) -> Grid:
    return grid_for(export, subject, "case", **kw)


def _ct(export: Export, subject: Subject, what: str, grid: Grid, **kw: Any) -> dict[str, Any]:
    return volume_series(export, subject, "CT", "CT", "CT", what, grid, **kw)


def _perm(export: Export, subject: Subject, n: int, salt: int) -> list[int]:
    perm = np.random.default_rng([export.seed, subject.index, salt]).permutation(n)
    if n > 1 and np.array_equal(perm, np.arange(n)):
        perm = np.roll(perm, 1)
    return [int(v) for v in perm]


@_case("shuffled_instance_numbers", "ct")
def shuffled_instance_numbers(export: Export, subject: Subject) -> None:
    g = _grid(export, subject)
    numbers = [p + 1 for p in _perm(export, subject, g.n_slices, 1)]
    _ct(export, subject, "CT SHUFFLED INSTANCE NUMBERS", g, flags=["shuffled_instance_numbers"],
        options=SliceOptions(instance_numbers=numbers), labels=True)


@_case("shuffled_file_names", "ct")
def shuffled_file_names(export: Export, subject: Subject) -> None:
    g = _grid(export, subject)
    _ct(export, subject, "CT SHUFFLED FILE NAMES", g, flags=["shuffled_file_names"],
        file_order=_perm(export, subject, g.n_slices, 2), labels=True)


@_case("oblique", "ct")
def oblique(export: Export, subject: Subject) -> None:
    g = _grid(export, subject, oblique=rotation("x", 20.0) @ rotation("y", 20.0))
    _ct(export, subject, "CT OBLIQUE", g, flags=["oblique", "oblique:x20y20"], labels=True)


@_case("gantry_tilt", "ct")
def gantry_tilt(export: Export, subject: Subject) -> None:
    g = _grid(export, subject, tilt=15.0)
    expected = {"status": "ok", "reason_contains": "gantry tilt", "n_volumes": 1, "shape": None, "timepoints": 1}
    _ct(export, subject, "CT TILT 15", g, flags=["tilt:15"], expected=expected, labels=True)


@_case("uneven_spacing", "ct")
def uneven_spacing(export: Export, subject: Subject) -> None:
    n, step = grid_for(export, subject, "case").n_slices, SIZES[export.size]["case"][3]
    gaps = np.full(n - 1, step)
    gaps[n // 3] = 1.5 * step  # not a multiple of the spacing: uneven, not a missing slice
    gaps[2 * n // 3] = 0.5 * step
    g = _grid(export, subject, gaps=gaps)
    # Refused by ingest's default (uneven=refuse); uneven=resample would interpolate it.
    expected = {"status": "error", "reason_contains": "uneven", "n_volumes": 1, "shape": None, "timepoints": 1}
    _ct(export, subject, "CT UNEVEN SPACING", g, flags=["uneven_spacing"], expected=expected)


@_case("missing_slice", "ct")
def missing_slice(export: Export, subject: Subject) -> None:
    g = _grid(export, subject)
    full = g.n_slices
    g.positions = np.delete(g.positions, full // 2, axis=0)
    # An error row under ingest's default (uneven=refuse); ``shape`` is the grid uneven=resample would give.
    expected = {"status": "error", "reason_contains": "missing slice", "n_volumes": 1,
                "shape": [g.cols, g.rows, full], "timepoints": 1}
    _ct(export, subject, "CT MISSING SLICE", g, flags=["missing_slice"], expected=expected)


@_case("shared_folder", "ct")
def shared_folder(export: Export, subject: Subject) -> None:
    g = _grid(export, subject)
    arterial = ph.CT_HU.copy()
    arterial[[ph.KIDNEY, ph.VESSEL, ph.LIVER]] = (220.0, 320.0, 55.0)
    first = _ct(export, subject, "CT ABDOMEN ARTERIAL", g, flags=["shared_folder"], table=arterial)
    # The portal-venous series is written into the arterial one's folder, numbering on.
    _ct(export, subject, "CT ABDOMEN PV SAME FOLDER", g, flags=["shared_folder"], shared_dir=first["folder"])


def _compressed(ts: str, what: str) -> CaseFn:
    def write(export: Export, subject: Subject) -> None:
        _ct(export, subject, what, _grid(export, subject), flags=["compressed", f"compressed:{ts}"],
            options=SliceOptions(transfer_syntax=ts), labels=True)

    return write


CASES["compressed_rle"] = Case("compressed_rle", "ct", _compressed(RLELossless, "CT RLE"))
CASES["compressed_jpegls"] = Case("compressed_jpegls", "ct", _compressed(JPEGLSLossless, "CT JPEG-LS"))
CASES["compressed_j2k"] = Case("compressed_j2k", "ct", _compressed(JPEG2000Lossless, "CT JPEG2000"))


@_case("localizer", "ct")
def localizer(export: Export, subject: Subject) -> None:
    """A CT topogram: one coronal image, ImageType LOCALIZER."""
    base = _grid(export, subject)
    rows, cols, pixel = base.rows + base.rows // 2, base.cols, base.spacing[0]
    row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 0, -1.0])
    cx, cy = subject.phantom.center
    top_left = np.array([cx, cy, 0.0]) - (cols - 1) / 2 * pixel * row_dir - (rows - 1) / 2 * pixel * col_dir
    g = Grid(rows, cols, (pixel, pixel), row_dir, col_dir, top_left[None, :], pixel)
    _ct(export, subject, "TOPOGRAM", g, flags=["localizer"], expected=_skipped("localizer"),
        image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"])


@_case("secondary_capture", "ct")
def secondary_capture(export: Export, subject: Subject) -> None:
    info, folder = new_info(export, subject, "CT", "OT", "CT", "SCREEN SAVE", _grid(export, subject))
    (name,) = export.file_names(folder, 1)
    write_secondary_capture(info, subject.phantom, export.root / name)
    record_series(export, info, folder, [name], flags=["secondary_capture"], modality="OT",
                  sop_class=SECONDARY_CAPTURE, expected=_skipped("secondary capture"), geometry=False)


@_case("sr", "ct")
def structured_report(export: Export, subject: Subject) -> None:
    info, folder = new_info(export, subject, "CT", "SR", "CT", "REPORT", _grid(export, subject))
    (name,) = export.file_names(folder, 1)
    write_basic_text_sr(info, export.root / name)
    record_series(export, info, folder, [name], flags=["sr"], modality="SR", sop_class=BASIC_TEXT_SR,
                  expected=_skipped("non-image"), geometry=False)


@_case("truncated", "ct")
def truncated(export: Export, subject: Subject) -> None:
    """A normal series with its middle slice cut in half (a copy interrupted mid-file).

    The file gets its own error (naming it); the rest of the series misses one slice:
    an error row under ingest's default (uneven=refuse), a volume with uneven=resample.
    """
    g = _grid(export, subject)
    expected = {"status": "error", "reason_contains": "missing slice", "n_volumes": 1,
                "shape": [g.cols, g.rows, g.n_slices], "timepoints": 1}
    entry = _ct(export, subject, "CT TRUNCATED", g, flags=["truncated"], expected=expected)
    bad = entry["files"][len(entry["files"]) // 2]
    path = export.root / bad
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    entry["bad_files"] = [bad]
    entry["expected_files"] = {bad: _error("truncated")}


@_case("missing_geometry", "ct")
def missing_geometry(export: Export, subject: Subject) -> None:
    def drop_iop(ds: Dataset, k: int) -> None:
        del ds.ImageOrientationPatient

    _ct(export, subject, "CT NO ORIENTATION", _grid(export, subject),
        flags=["missing_tag:ImageOrientationPatient"], options=SliceOptions(mutate=drop_iop),
        expected=_error("imageorientationpatient"))


@_case("unknown_transfer_syntax", "ct")
def unknown_transfer_syntax(export: Export, subject: Subject) -> None:
    entry = _ct(export, subject, "CT PRIVATE COMPRESSION", _grid(export, subject, n_slices=6),
                flags=["unknown_transfer_syntax", f"ts:{UNKNOWN_TS}"],
                options=SliceOptions(mutate=scramble_unknown_ts), expected=_error("transfer syntax"))
    entry["bad_files"] = list(entry["files"])  # headers read, pixels cannot be decoded


@_case("too_few_slices", "ct")
def too_few_slices(export: Export, subject: Subject) -> None:
    # Two positions define the spacing: written and flagged; selection rules (qc.min_slices) skip it.
    g = _grid(export, subject, n_slices=2)
    _ct(export, subject, "CT TWO SLICES", g, flags=["too_few_slices"],
        expected=expected_ok([g.cols, g.rows, 2], reason_contains="only 2 slice positions"))


def _position_case(position: str) -> CaseFn:
    def write(export: Export, subject: Subject) -> None:
        g = _grid(export, subject, position=position)
        _ct(export, subject, f"CT ABDOMEN {position}", g, position=position,
            flags=[f"position:{position}"], labels=True)

    return write


for _p in POSITIONS:
    CASES[f"position_{_p.lower()}"] = Case(f"position_{_p.lower()}", "own", _position_case(_p))


@_case("enhanced_mr", "mr")
def enhanced_mr(export: Export, subject: Subject) -> None:
    g = grid_for(export, subject, "case")
    info, folder = new_info(export, subject, "MR", "MR", "T1", "MR ENHANCED T1", g)
    (name,) = export.file_names(folder, 1)
    labels = write_enhanced_mr(info, subject.phantom, export.root / name, series_rng(export, info))
    entry = record_series(export, info, folder, [name], flags=["enhanced", "multiframe"], sop_class=ENHANCED_MR)
    entry["labels"] = write_labels(export, subject, info, [name], labels)


@_case("dynamic_4d", "mr")
def dynamic_4d(export: Export, subject: Subject) -> None:
    """A DCE-like T1 series: the same positions at 3 temporal positions, enhancing organs."""
    g = grid_for(export, subject, "case")
    phases = 3
    info, folder = new_info(export, subject, "MR", "MR", "T1", "MR DYNAMIC T1", g)
    files: list[str] = []
    hh = int(subject.phi.times["AcquisitionTime"][:2])
    for t in range(phases):
        table = ph.MR_T1.copy()
        table[[ph.LIVER, ph.KIDNEY, ph.VESSEL, ph.SPLEEN]] *= (1 + 0.3 * t, 1 + 0.7 * t, 1 + 3.0 * t, 1 + 0.5 * t)
        acq_time = f"{hh:02d}2{t}00.000000"
        info.table = table
        info.extra = {"TemporalPositionIdentifier": t + 1, "NumberOfTemporalPositions": phases,
                      "TriggerTime": 20000.0 * t, "AcquisitionTime": acq_time}
        export.canaries.add(acq_time)
        names = export.file_names(folder, g.n_slices)
        write_slices(info, subject.phantom, [export.root / n for n in names], series_rng(export, info, t),
                     SliceOptions(index_offset=t * g.n_slices))
        files += [names[i] for i in g.sorted_order()]
    record_series(export, info, folder, files, flags=["4d", f"timepoints:{phases}"],
                  expected=expected_ok([g.cols, g.rows, g.n_slices], timepoints=phases))


@_case("localizer_3plane", "mr")
def localizer_3plane(export: Export, subject: Subject) -> None:
    """An MR 3-plane localizer: axial, coronal and sagittal slices, no LOCALIZER in ImageType."""
    base = grid_for(export, subject, "case")
    n, pixel = base.rows, base.spacing[0]
    cx, cy = subject.phantom.center
    centre = np.array([cx, cy, 0.0])
    planes = {"AX": ((1, 0, 0), (0, 1, 0)), "COR": ((1, 0, 0), (0, 0, -1)), "SAG": ((0, 1, 0), (0, 0, -1))}
    info = None
    files: list[str] = []
    folder = ""
    for i, (row, col) in enumerate(planes.values()):
        r, c = np.asarray(row, float), np.asarray(col, float)
        top_left = centre - (n - 1) / 2 * pixel * (r + c)
        g = Grid(n, n, (pixel, pixel), r, c, top_left[None, :], 8.0)
        if info is None:
            info, folder = new_info(export, subject, "MR", "MR", "T1", "MR LOCALIZER 3-PLANE", g,
                                    image_type=["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"])
        info.grid = g
        (name,) = export.file_names(folder, 1)
        write_slices(info, subject.phantom, [export.root / name], series_rng(export, info, i),
                     SliceOptions(index_offset=i))
        files.append(name)
    assert info is not None
    record_series(export, info, folder, files, flags=["localizer", "three_plane"],
                  expected=_skipped("localizer"), geometry=False)


def resolve_cases(cases: str | Sequence[str] | None) -> list[str]:
    """Case names from ``"all"``, ``"none"``, one name, or a list (in :data:`CASES` order).

    Raises:
        ValueError: an unknown case name (the known ones are listed).
    """
    if cases is None or cases in ("none", ""):
        return []
    if cases == "all":
        return list(CASES)
    names = [cases] if isinstance(cases, str) else list(cases)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"unknown synth case(s) {unknown}; known: {sorted(CASES)}")
    return [n for n in CASES if n in names]


def run_cases(export: Export, names: list[str], first_subject: int) -> None:
    """Write ``names`` on subjects ``first_subject``, ... (one per group, one per position)."""
    subjects: dict[str, Subject] = {}
    next_index = first_subject
    for name in names:
        case = CASES[name]
        key = name if case.group == "own" else case.group
        if key not in subjects:
            subjects[key] = export.subject(next_index)
            next_index += 1
        case.fn(export, subjects[key])
